"""``dynactl service`` (run on a node's host) and ``dynactl package`` (run on the controller)."""

from __future__ import annotations

import signal

import click

from dynactl.context import Context, pass_context
from dynactl.output import EXIT_INTERNAL, EXIT_NO, EXIT_USAGE
from dynactl.package import DEFAULT_WHEELHOUSE, PackageError, build_wheelhouse
from dynactl.service import Service, ServiceError


@click.command("package")
@click.option("--dir", "directory", default=DEFAULT_WHEELHOUSE, show_default=True,
              help="wheelhouse directory (kept between runs: dependencies are built once)")
@click.option("--source", type=click.Path(exists=True, file_okay=False), default=None,
              help="checkout to build [default: the one this dynactl runs from]")
@pass_context
def package(ctx: Context, directory: str, source: str | None) -> None:
    """Build wheels of the project and all its dependencies, for hosts without internet."""
    try:
        built = build_wheelhouse(directory, source)
    except PackageError as exc:
        ctx.out.fail(EXIT_INTERNAL, str(exc))
    ctx.out.document(built, text=built["wheel"])


@click.group("service")
def service() -> None:
    """Run the dynamod of this host (systemd when its unit is installed, else a pidfile supervisor)."""


def _service_command(name: str, doc: str):
    def decorate(act):
        @service.command(name, help=doc)
        @click.option("--config", "config", required=True, type=click.Path(dir_okay=False),
                      help="the node's node.toml")
        @click.option("--pidfile", default=None, help="[default: dynamod.pid next to the config]")
        @click.option("--user", default=None, help="run the node as this user (when started as root)")
        @click.option("--faketime", "faketime_file", default=None,
                      help="run under libfaketime, its clock read from this timestamp file (clock nemesis)")
        @click.option("--wait", type=float, default=30.0, show_default=True,
                      help="seconds a start waits for /admin/status to answer")
        @pass_context
        def command(ctx: Context, config: str, pidfile: str | None, user: str | None, faketime_file: str | None,
                    wait: float) -> None:
            try:
                node = Service.from_config(config, pidfile, user=user, faketime_file=faketime_file)
                ok, message = act(node, wait)
            except ServiceError as exc:
                ctx.out.fail(EXIT_NO if "exited" in str(exc) or "does not answer" in str(exc) else EXIT_USAGE,
                             str(exc))
            ctx.out.document({"result": message, "ok": ok, "config": config}, text=message)
            if not ok:
                raise click.exceptions.Exit(EXIT_NO)
        return command
    return decorate


@_service_command("start", "Start the node unless it runs; wait until it answers.")
def _start(node: Service, wait: float):
    return True, node.start(wait)


@_service_command("stop", "Stop the node (SIGTERM, SIGKILL after a grace period).")
def _stop(node: Service, wait: float):
    return True, node.stop()


@_service_command("restart", "Stop, then start and wait until it answers.")
def _restart(node: Service, wait: float):
    node.stop()
    return True, node.start(wait)


@_service_command("status", "Exit 0 when the node runs, 1 when it does not.")
def _status(node: Service, wait: float):
    return node.status()


@_service_command("kill", "SIGKILL the node (a crash).")
def _kill(node: Service, wait: float):
    return True, node.signal(signal.SIGKILL, "killed")


@_service_command("pause", "SIGSTOP the node (a stalled process).")
def _pause(node: Service, wait: float):
    return True, node.signal(signal.SIGSTOP, "paused")


@_service_command("resume", "SIGCONT a paused node.")
def _resume(node: Service, wait: float):
    return True, node.signal(signal.SIGCONT, "resumed")


COMMANDS = (package, service)
