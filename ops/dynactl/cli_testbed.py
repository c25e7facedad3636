"""``dynactl testbed up|down``: test hosts on this machine (root)."""

from __future__ import annotations

import click

from dynactl.context import Context, pass_context
from dynactl.output import EXIT_INTERNAL, EXIT_USAGE
from dynactl.testbed import DEFAULT_DIR, Testbed, TestbedError


@click.group("testbed")
def testbed() -> None:
    """Test hosts on this machine: network namespaces with their own address and sshd (root)."""


def _dir_option(command):
    return click.option("--dir", "directory", default=DEFAULT_DIR, show_default=True,
                        help="where keys, inventory.ini, nodes.json and the hosts' directories live")(command)


def _fail(ctx: Context, exc: TestbedError) -> None:
    ctx.out.fail(EXIT_USAGE if "needs root" in str(exc) or "must be between" in str(exc) else EXIT_INTERNAL,
                 str(exc))


@testbed.command("up")
@click.option("--hosts", "count", type=int, default=3, show_default=True, help="how many hosts (h1..hN)")
@_dir_option
@pass_context
def testbed_up(ctx: Context, count: int, directory: str) -> None:
    """Create (or repair, or resize to) N hosts; idempotent."""
    bed = Testbed(directory)
    try:
        hosts = bed.up(count)
    except TestbedError as exc:
        _fail(ctx, exc)
    ctx.out.document({"hosts": hosts, "inventory": str(bed.directory / "inventory.ini"),
                      "nodes_file": str(bed.directory / "nodes.json")},
                     table=[[h["name"], h["address"], h["namespace"], f"ssh -i {h['ssh_key']} root@{h['address']}"]
                            for h in hosts],
                     headers=["host", "address", "namespace", "login"])
    if not ctx.out.json:
        click.echo(f"inventory: {bed.directory / 'inventory.ini'}")


@testbed.command("down")
@_dir_option
@pass_context
def testbed_down(ctx: Context, directory: str) -> None:
    """Remove every namespace, link, rule and process the testbed created."""
    try:
        removed = Testbed(directory).down()
    except TestbedError as exc:
        _fail(ctx, exc)
    ctx.out.document({"removed": removed}, text="\n".join(removed) if removed else "nothing to remove")


COMMANDS = (testbed,)
