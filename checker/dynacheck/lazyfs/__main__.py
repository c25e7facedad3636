"""``python -m dynacheck.lazyfs mount|crash|unmount|status``: exit 0 done, 1 could not (the reason
on stderr). Each prints one JSON object on stdout."""

from __future__ import annotations

import json
import os
import sys
import time

import click

from dynacheck.lazyfs import control


def _run(action, *args) -> None:
    try:
        result = action(*args)
    except (control.LazyFSError, OSError) as exc:
        click.echo(f"lazyfs: {exc}", err=True)
        sys.exit(1)
    click.echo(json.dumps(result, sort_keys=True))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """A FUSE layer that keeps unsynced writes in memory and loses them on `crash` (LazyFS)."""


@cli.command("mount")
@click.argument("backing")
@click.argument("mountpoint")
@click.option("--pidfile", help="the daemon's pidfile (default: in the run dir); its control socket sits beside it")
@click.option("--log", help="the daemon's log (default: in the run dir)")
def mount_command(backing: str, mountpoint: str, pidfile: str | None, log: str | None) -> None:
    """Mount BACKING on MOUNTPOINT (both created as needed); returns once the mount is live."""
    _run(control.mount, backing, mountpoint, pidfile, log)


@cli.command("crash")
@click.argument("mountpoint")
def crash_command(mountpoint: str) -> None:
    """Drop every unsynced change and mount the same backing dir afresh (nothing may be open on it)."""
    _run(control.crash, mountpoint)


@cli.command("unmount")
@click.argument("mountpoint")
def unmount_command(mountpoint: str) -> None:
    """Unmount cleanly, flushing unsynced changes to the backing dir first; exit 0 if nothing was mounted."""
    _run(control.unmount, mountpoint)


@cli.command("status")
@click.argument("mountpoint")
def status_command(mountpoint: str) -> None:
    """Print whether MOUNTPOINT is mounted, the daemon's pid, pending data and counters."""
    _run(control.status, mountpoint)


@cli.command("serve", hidden=True)
@click.argument("backing")
@click.argument("mountpoint")
@click.option("--socket", "socket_path", required=True)
@click.option("--pidfile", required=True)
def serve_command(backing: str, mountpoint: str, socket_path: str, pidfile: str) -> None:
    """The daemon itself (started by `mount`)."""
    from dynacheck.lazyfs.fs import serve  # only the daemon needs libfuse

    sys.exit(serve(backing, mountpoint, socket_path, pidfile))


@cli.command("bench")
@click.argument("directory")
@click.option("--count", default=500, show_default=True, help="writes, each followed by an fsync")
@click.option("--size", default=1024, show_default=True, help="bytes per write")
def bench_command(directory: str, count: int, size: int) -> None:
    """Append SIZE bytes and fsync, COUNT times, in a file in DIRECTORY; print the rate."""
    path = os.path.join(directory, f"lazyfs-bench.{os.getpid()}")
    data = os.urandom(size)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        started = time.perf_counter()
        for _ in range(count):
            os.write(fd, data)
            os.fsync(fd)
        elapsed = time.perf_counter() - started
    finally:
        os.close(fd)
        os.unlink(path)
    click.echo(json.dumps({"directory": directory, "count": count, "size": size, "seconds": round(elapsed, 4),
                           "ops_per_s": round(count / elapsed, 1), "mean_ms": round(elapsed / count * 1000, 3)}))


if __name__ == "__main__":
    cli(prog_name="python -m dynacheck.lazyfs")
