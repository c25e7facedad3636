"""``dynactl testbed up|down``: test hosts on this machine (root)."""

from __future__ import annotations

import click

from dynactl.context import Context, pass_context
from dynactl.output import EXIT_INTERNAL, EXIT_USAGE
from dynactl.rootfs import DEFAULT_CACHE
from dynactl.testbed import DEFAULT_DIR, KINDS, Testbed, TestbedError


@click.group("testbed")
def testbed() -> None:
    """Test hosts on this machine, each with its own address and sshd (root): network namespaces, or
    Debian machines booted with systemd as PID 1 (--kind machine)."""


def _dir_option(command):
    return click.option("--dir", "directory", default=DEFAULT_DIR, show_default=True,
                        help="where keys, inventory.ini, nodes.json and the hosts' directories live")(command)


def _fail(ctx: Context, exc: TestbedError) -> None:
    usage = ("needs root", "must be between", "must be one of", "take it down first")
    ctx.out.fail(EXIT_USAGE if any(words in str(exc) for words in usage) else EXIT_INTERNAL, str(exc))


@testbed.command("up")
@click.option("--hosts", "count", type=int, default=3, show_default=True, help="how many hosts (h1..hN)")
@click.option("--kind", type=click.Choice(KINDS),
              help="netns: namespaces sharing this machine's files (fast; the default for a new testbed); "
                   "machine: Debian machines with systemd as PID 1 (systemd-nspawn; the first builds their "
                   "root file system, about a minute). Default: the testbed's kind")
@click.option("--rootfs-cache", default=DEFAULT_CACHE, show_default=True,
              help="where the machines' root file system is built and kept (--kind machine)")
@_dir_option
@pass_context
def testbed_up(ctx: Context, count: int, kind: str | None, rootfs_cache: str, directory: str) -> None:
    """Create (or repair, or resize to) N hosts; idempotent."""
    bed = Testbed(directory, rootfs_cache=rootfs_cache)
    try:
        hosts = bed.up(count, kind, progress=lambda message: click.echo(message, err=True))
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
    """Remove every machine, namespace, link, overlay, cgroup, rule and process the testbed created."""
    try:
        removed = Testbed(directory).down()
    except TestbedError as exc:
        _fail(ctx, exc)
    ctx.out.document({"removed": removed}, text="\n".join(removed) if removed else "nothing to remove")


COMMANDS = (testbed,)
