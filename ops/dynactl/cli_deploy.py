"""``dynactl deploy|start|stop|restart|logs|rolling-restart``: nodes on hosts, over SSH."""

from __future__ import annotations

import os
import shlex
import sys
from typing import Any

import click

from dynactl.context import Context, pass_context
from dynactl.credentials import host_credentials, nodes_file_credentials, with_credentials
from dynactl.deploy import (
    DeployError,
    controller_credentials,
    deploy,
    rolling_restart,
    service_command,
    wait_deployed,
)
from dynactl.inventory import Host, InventoryError, load_hosts, select
from dynactl.output import EXIT_INTERNAL, EXIT_NO, EXIT_USAGE
from dynactl.package import DEFAULT_WHEELHOUSE, PackageError, build_wheelhouse
from dynactl.remote import HostResult, SshHosts
from dynactl.testbed import DEFAULT_DIR as TESTBED_DIR
from dynamod.client import CredentialsError

DEFAULT_INVENTORY = f"{TESTBED_DIR}/inventory.ini"


def _inventory_option(command: Any) -> Any:
    return click.option("--inventory", "inventory", default=None, metavar="FILE",
                        help="Ansible INI inventory or nodes.json [default: $DYNACTL_INVENTORY, "
                             f"else {DEFAULT_INVENTORY}]")(command)


def _hosts(ctx: Context, inventory: str | None, names: tuple[str, ...] = ()) -> tuple[list[Host], list[Host]]:
    """(the chosen hosts, every node host of the inventory), carrying the credentials their nodes'
    health is checked with: dynactl's own (--ca ...), else the nodes file's "tls", else the hosts'
    dynactl_tls variable."""
    path = inventory or os.environ.get("DYNACTL_INVENTORY") or DEFAULT_INVENTORY
    try:
        hosts = load_hosts(path)
        credentials = ctx.given_credentials() or nodes_file_credentials(path)
        # Each host holds the parsed credentials, so that its health checks share one TLS context.
        everyone = [with_credentials(host, ctx.usable(credentials or host_credentials(host)
                                                      or controller_credentials(host))) for host in hosts]
        return select(everyone, names), everyone
    except (InventoryError, CredentialsError, DeployError) as exc:
        ctx.out.fail(EXIT_USAGE, str(exc))


def _report(ctx: Context, results: dict[str, HostResult], action: str) -> None:
    """One line per host; exit 1 naming the hosts that failed (and that the others went ahead)."""
    failed = [name for name, result in results.items() if not result.ok]
    document = {"action": action, "hosts": {name: result.as_json() for name, result in results.items()},
                "failed": failed}
    ctx.out.document(document, text="\n".join(result.line() for result in results.values()))
    if failed:
        done = [name for name in results if name not in failed]
        click.echo(f"dynactl: {action} failed on {', '.join(failed)}"
                   + (f"; it went ahead on {', '.join(done)}" if done else ""), err=True)
        sys.exit(EXIT_NO)


@click.command("deploy")
@_inventory_option
@click.option("--wheelhouse", default=DEFAULT_WHEELHOUSE, show_default=True, help="where wheels are built")
@click.argument("names", nargs=-1, metavar="[HOST]...")
@pass_context
def deploy_command(ctx: Context, inventory: str | None, wheelhouse: str, names: tuple[str, ...]) -> None:
    """Install the project from this checkout on the hosts (offline, from built wheels), write each
    node.toml and start the nodes; running nodes whose software or config changed are restarted one
    at a time, each once the cluster is healthy."""
    hosts, everyone = _hosts(ctx, inventory, names)
    try:
        built = build_wheelhouse(wheelhouse)
    except PackageError as exc:
        ctx.out.fail(EXIT_INTERNAL, str(exc))
    with SshHosts(everyone) as control:
        results = deploy(control, hosts, built, everyone,
                         progress=lambda line: click.echo(f"restart: {line}", err=True))
    deployed = [h for h in hosts if results[h.name].ok]
    unhealthy = wait_deployed(deployed, everyone, progress=lambda line: click.echo(f"waiting: {line}", err=True))
    for name, why in unhealthy.items():
        results[name] = HostResult(host=name, ok=False, error=f"deployed, but {why}")
    _report(ctx, results, "deploy")


def _service_on_hosts(action: str, doc: str) -> None:
    @click.command(action, help=doc)
    @_inventory_option
    @click.argument("names", nargs=-1, metavar="[HOST]...")
    @pass_context
    def command(ctx: Context, inventory: str | None, names: tuple[str, ...]) -> None:
        hosts, _ = _hosts(ctx, inventory, names)
        with SshHosts(hosts) as control:
            results = control.each(lambda connection, host: connection.run(
                service_command(host, action), hide=True, warn=True, in_stream=False))
        _report(ctx, results, action)
    COMMANDS.append(command)


@click.command("logs")
@_inventory_option
@click.option("--lines", "-n", type=int, default=20, show_default=True, help="last lines of each node's log")
@click.argument("names", nargs=-1, metavar="[HOST]...")
@pass_context
def logs(ctx: Context, inventory: str | None, lines: int, names: tuple[str, ...]) -> None:
    """Show the last lines of each node's log (JSON lines) and of its stderr."""
    hosts, _ = _hosts(ctx, inventory, names)

    def tail(connection: Any, host: Host) -> Any:
        log_dir = shlex.quote(str(host.var("dynamod_log_dir")))
        return connection.run(f"tail -n {int(lines)} {log_dir}/dynamod.log {log_dir}/stderr.log 2>/dev/null; true",
                              hide=True, warn=True, in_stream=False)
    with SshHosts(hosts) as control:
        results = control.each(tail)
    if ctx.out.json:
        _report(ctx, results, "logs")
        return
    for name, result in results.items():
        click.echo(f"== {name} ==")
        click.echo(result.stdout.rstrip() if result.ok else f"({result.error})")
    if any(not r.ok for r in results.values()):
        sys.exit(EXIT_NO)


@click.command("rolling-restart")
@_inventory_option
@click.option("--timeout", type=float, default=120, show_default=True,
              help="seconds each node may take to be healthy again")
@click.argument("names", nargs=-1, metavar="[HOST]...")
@pass_context
def rolling_restart_command(ctx: Context, inventory: str | None, timeout: float, names: tuple[str, ...]) -> None:
    """Restart the nodes one at a time, each only once the cluster is healthy (every member up,
    no transfer pending) and waiting until it is healthy again before the next."""
    hosts, everyone = _hosts(ctx, inventory, names)
    with SshHosts(hosts) as control:
        try:
            done = rolling_restart(control, hosts, everyone, progress=lambda line: click.echo(line, err=True),
                                   deadline_seconds=timeout)
        except DeployError as exc:
            ctx.out.fail(EXIT_NO, str(exc))
    ctx.out.document({"restarted": done}, text=f"restarted {', '.join(done)}; the cluster is healthy")


COMMANDS: list[Any] = [deploy_command, logs, rolling_restart_command]
_service_on_hosts("start", "Start the nodes on the hosts (those already running are left alone).")
_service_on_hosts("stop", "Stop the nodes on the hosts (SIGTERM, SIGKILL after a grace period).")
_service_on_hosts("restart", "Restart the nodes on the hosts, all at once (see rolling-restart).")
