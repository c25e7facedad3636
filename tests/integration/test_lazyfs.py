"""lazyfs on real FUSE mounts, driven through its CLI (``python -m dynacheck.lazyfs``) as the power
nemesis drives it: unsynced data is lost on ``crash``, fsynced data and metadata are not, and a
Berkeley DB environment on the mount keeps every flushed write across a kill -9 plus a crash."""

from __future__ import annotations

import ctypes
import errno
import fcntl
import functools
import json
import mmap
import os
import subprocess
import sys
import textwrap
import traceback
from ctypes.util import find_library
from pathlib import Path

import pytest


def _why_no_fuse() -> str | None:
    if os.geteuid() != 0:
        return "lazyfs mounts need root"
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse"
    if not (find_library("fuse3") or find_library("fuse")):
        return "libfuse is not installed (apt-get install fuse3 libfuse3-3)"
    try:
        import mfusepy  # noqa: F401
    except (ImportError, OSError) as exc:
        return f"mfusepy cannot load libfuse: {exc}"
    return None


pytestmark = [pytest.mark.integration, pytest.mark.skipif(_why_no_fuse() is not None, reason=str(_why_no_fuse()))]


def lazyfs(*args: object, check: bool = True) -> subprocess.CompletedProcess:
    """Run the CLI; with ``check`` it must exit 0."""
    done = subprocess.run([sys.executable, "-m", "dynacheck.lazyfs", *map(str, args)],
                          capture_output=True, text=True, timeout=60, check=False)
    if check:
        assert done.returncode == 0, f"lazyfs {args} exit {done.returncode}: {done.stderr}"
    return done


def output(*args: object) -> dict:
    return json.loads(lazyfs(*args).stdout)


def mounted(path: Path) -> bool:
    with open("/proc/self/mountinfo") as mountinfo:
        return any(line.split()[4] == str(path) for line in mountinfo)


_CLONE_NEWNS = 0x00020000
_MS_REC, _MS_PRIVATE = 0x4000, 0x40000


def _unmount_everything() -> None:
    """Unmount (cleanly, else lazily) every lazyfs mount of this mount namespace."""
    with open("/proc/self/mountinfo") as mountinfo:
        ours = [line.split()[4] for line in mountinfo if " - fuse.lazyfs " in line]
    for mountpoint in ours:
        lazyfs("unmount", mountpoint, check=False)
        if mounted(Path(mountpoint)):
            subprocess.run(["umount", "-l", mountpoint], check=False)


def isolated(test):
    """Run the test's body in a forked child with a mount namespace of its own, unmounting all
    it mounted before the child exits: a mount in the machine's namespace would be copied into
    every namespace other processes create meanwhile (test hosts do), and outlive our unmount."""

    @functools.wraps(test)
    def run(*args, **kwargs):
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read_fd)
            failure = b""
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                if libc.unshare(_CLONE_NEWNS) != 0 or libc.mount(b"none", b"/", None, _MS_REC | _MS_PRIVATE, None):
                    raise OSError(ctypes.get_errno(), "cannot make a private mount namespace")
                try:
                    test(*args, **kwargs)
                finally:
                    _unmount_everything()
            except BaseException:  # noqa: B036 - everything goes back to the parent as a failure
                failure = traceback.format_exc().encode()
            with os.fdopen(write_fd, "wb") as out:
                out.write(failure)
            os._exit(1 if failure else 0)
        os.close(write_fd)
        with os.fdopen(read_fd, "rb") as source:
            failure = source.read()
        _, status = os.waitpid(pid, 0)
        if failure or status:
            pytest.fail(failure.decode() or f"the test's child ended with status {status}", pytrace=False)

    return run


@pytest.fixture
def mount(tmp_path, monkeypatch):
    """``mount(name)`` mounts tmp_path/name.backing on tmp_path/name (for ``isolated`` tests)."""
    monkeypatch.setenv("DYNACHECK_LAZYFS_RUN_DIR", str(tmp_path / "run"))

    def make(name: str = "mnt") -> tuple[Path, Path]:
        backing, mountpoint = tmp_path / f"{name}.backing", tmp_path / name
        result = output("mount", backing, mountpoint)
        assert result["already"] is False and mounted(mountpoint)
        return backing, mountpoint

    return make


def write_file(path: Path, data: bytes, fsync: bool, flags: int = 0) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | flags, 0o644)
    try:
        os.write(fd, data)
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)


@isolated
def test_crash_loses_the_unsynced_file_and_keeps_the_fsynced_one(mount):
    backing, mnt = mount()
    write_file(mnt / "a", b"never synced", fsync=False)
    write_file(mnt / "b", b"synced", fsync=True)
    assert (mnt / "a").read_bytes() == b"never synced"  # visible through the mount meanwhile
    assert (backing / "a").read_bytes() == b"" and (backing / "b").read_bytes() == b"synced"
    before = output("status", mnt)
    assert before["mounted"] and before["pending_files"] == 1 and before["pending_bytes"] == len(b"never synced")

    crashed = output("crash", mnt)

    assert crashed["lost_files"] == 1 and crashed["crashes"] == 1 and crashed["pid"] != before["pid"]
    assert (mnt / "a").exists(), "the create was metadata: it went to the backing dir at once"
    assert (mnt / "a").read_bytes() == b""
    assert (mnt / "b").read_bytes() == b"synced"
    after = output("status", mnt)
    assert after["mounted"] and after["crashes"] == 1 and after["pending_files"] == 0


@isolated
def test_truncate_rename_mmap_fallocate_and_locks(mount):
    _, mnt = mount()
    write_file(mnt / "t", b"old content", fsync=True)
    write_file(mnt / "t", b"new", fsync=False, flags=os.O_TRUNC)  # the truncate is pending data too
    assert (mnt / "t").read_bytes() == b"new"
    write_file(mnt / "r", b"renamed, then synced", fsync=False)
    os.rename(mnt / "r", mnt / "r2")  # pending data follows the file, not the name
    fd = os.open(mnt / "r2", os.O_RDWR)
    os.fsync(fd)
    os.close(fd)
    fd = os.open(mnt / "m", os.O_RDWR | os.O_CREAT, 0o600)
    os.ftruncate(fd, 8192)
    with mmap.mmap(fd, 8192) as shared:
        shared[4096:4102] = b"mapped"
        shared.flush()  # msync: the kernel writes the page back through us, then fsyncs
    os.close(fd)
    fd = os.open(mnt / "f", os.O_RDWR | os.O_CREAT, 0o600)
    os.posix_fallocate(fd, 0, 10000)
    assert os.fstat(fd).st_size == 10000
    fcntl.flock(fd, fcntl.LOCK_EX)
    probe = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import fcntl, os, sys
        fd = os.open({str(mnt / 'f')!r}, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            sys.exit(7)
        """)], check=False, timeout=30)
    assert probe.returncode == 7, "a second process took the exclusive lock"
    os.close(fd)

    output("crash", mnt)

    assert (mnt / "t").read_bytes() == b"old content"
    assert not (mnt / "r").exists() and (mnt / "r2").read_bytes() == b"renamed, then synced"
    assert (mnt / "m").read_bytes()[4096:4102] == b"mapped"
    assert (mnt / "f").stat().st_size == 0


@isolated
def test_clean_unmount_flushes_and_mount_is_idempotent(mount):
    backing, mnt = mount()
    assert output("mount", backing, mnt)["already"] is True
    write_file(mnt / "c", b"flushed at unmount", fsync=False)
    held = os.open(mnt / "c", os.O_RDONLY)
    try:
        busy = lazyfs("unmount", mnt, check=False)
        assert busy.returncode == 1 and "busy" in busy.stderr and mounted(mnt)
    finally:
        os.close(held)

    assert output("unmount", mnt)["flushed_bytes"] == len(b"flushed at unmount")

    assert not mounted(mnt) and (backing / "c").read_bytes() == b"flushed at unmount"
    assert output("unmount", mnt)["unmounted"] is False
    assert output("status", mnt)["mounted"] is False


@isolated
def test_crash_with_a_file_still_open_detaches_the_old_mount(mount):
    _, mnt = mount()
    write_file(mnt / "kept", b"synced", fsync=True)
    held = os.open(mnt / "kept", os.O_RDONLY)
    try:
        crashed = lazyfs("crash", mnt)
        assert "busy" in crashed.stderr and json.loads(crashed.stdout)["old_mount"] == "detached"
        with pytest.raises(OSError) as failed:
            os.pread(held, 10, 0)  # the old mount's daemon is gone
        assert failed.value.errno == errno.ENOTCONN
    finally:
        os.close(held)
    assert (mnt / "kept").read_bytes() == b"synced"


ENGINE_CHILD = textwrap.dedent("""
    import os, signal, sys
    from dynamod.storage.bdb import BerkeleyEngine
    engine = BerkeleyEngine(sys.argv[1], sync=True)
    for index in range(100):
        engine.apply([(b"flushed-%d" % index, b"f" * 1000)])
    engine.flush()
    # 3 MiB of commits after the last flush: more than the 1 MiB log buffer, so Berkeley DB writes
    # some of them to the log file, without fsync.
    for index in range(3000):
        engine.apply([(b"unflushed-%d" % index, b"u" * 1000)])
    os.kill(os.getpid(), signal.SIGKILL)
""")


def survivors(data_dir: Path) -> tuple[int, int]:
    """Open the engine (recovery runs) and count the (flushed, unflushed) keys it holds."""
    from dynamod.storage.bdb import BerkeleyEngine

    engine = BerkeleyEngine(str(data_dir), sync=True)
    try:
        keys = set(engine.keys())
    finally:
        engine.close()
    return (sum(b"flushed-%d" % index in keys for index in range(100)),
            sum(b"unflushed-%d" % index in keys for index in range(3000)))


@isolated
def test_berkeley_engine_keeps_every_flushed_write_across_kill_and_crash(mount):
    _, mnt = mount()
    for data_dir in (mnt / "killed", mnt / "crashed"):
        child = subprocess.run([sys.executable, "-c", ENGINE_CHILD, str(data_dir)], check=False, timeout=60,
                               capture_output=True, text=True)
        assert child.returncode == -9, child.stderr
    # The control: a kill -9 alone keeps the commits that reached the log file unsynced.
    flushed, unflushed = survivors(mnt / "killed")
    assert flushed == 100 and unflushed > 0
    assert output("status", mnt)["pending_files"] > 0  # the crashed dir's log writes and region files

    output("crash", mnt)

    # Only what was fsynced is left: every flushed write, none of the others.
    assert survivors(mnt / "crashed") == (100, 0)


@isolated
def test_mount_refuses_a_non_empty_mountpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("DYNACHECK_LAZYFS_RUN_DIR", str(tmp_path / "run"))
    (tmp_path / "mnt").mkdir()
    (tmp_path / "mnt" / "existing").write_text("x")
    refused = lazyfs("mount", tmp_path / "backing", tmp_path / "mnt", check=False)
    assert refused.returncode == 1 and "not empty" in refused.stderr and not mounted(tmp_path / "mnt")
    assert lazyfs("crash", tmp_path / "mnt", check=False).returncode == 1
