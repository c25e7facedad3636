"""The commands of lazyfs: mount, crash, unmount, status, run on the node's host.

A mount is found again by its mountpoint alone through a small record in the run directory
(``$DYNACHECK_LAZYFS_RUN_DIR``, else ``/run/dynacheck-lazyfs`` for root): the backing dir, the daemon's
pidfile and control socket, its log and how many crashes it went through. ``crash`` is a kill -9 of
the daemon (its memory is exactly the unsynced data), an unmount of the dead mount (which takes the
kernel's page cache with it) and a fresh daemon over the same backing dir.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import attrs

from dynamod.polling import wait_until

#: The file system type the kernel reports for our mounts (``fsname``/``subtype`` in fs.py).
FSTYPE = "fuse.lazyfs"
MOUNT_DEADLINE_SECONDS = 10.0
UNMOUNT_DEADLINE_SECONDS = 30.0
# The caller kills the node first; a killed process has closed its files by the time it is a zombie.
BUSY_DEADLINE_SECONDS = 3.0
_MNT_DETACH = 2
# sun_path holds 108 bytes, the terminating NUL included.
_SOCKET_PATH_MAX = 107


class LazyFSError(Exception):
    """A command that cannot do what was asked; the CLI prints it and exits 1."""


# --- /proc/self/mountinfo ---------------------------------------------------------------------------

def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash in paths as octal escapes."""
    return field.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def parse_mountinfo(text: str) -> dict[str, tuple[str, str]]:
    """Mountpoint -> (fstype, source) for every line of a mountinfo text (the last mount on a path
    wins: it is the one that path shows)."""
    mounts: dict[str, tuple[str, str]] = {}
    for line in text.splitlines():
        fields = line.split()
        if " - " not in line or len(fields) < 5:
            continue
        after = line.split(" - ", 1)[1].split()
        if len(after) < 2:
            continue
        mounts[_unescape(fields[4])] = (after[0], _unescape(after[1]))
    return mounts


def mount_at(mountpoint: str) -> tuple[str, str] | None:
    """The (fstype, source) mounted on ``mountpoint`` in this mount namespace, or None."""
    with open("/proc/self/mountinfo") as mountinfo:
        return parse_mountinfo(mountinfo.read()).get(mountpoint)


# --- records in the run directory ----------------------------------------------------------------

def run_dir() -> str:
    """Where the records, pidfiles, sockets and logs of this host's mounts live."""
    explicit = os.environ.get("DYNACHECK_LAZYFS_RUN_DIR")
    if explicit:
        return explicit
    return "/run/dynacheck-lazyfs" if os.geteuid() == 0 else f"/tmp/dynacheck-lazyfs-{os.geteuid()}"


@attrs.define
class Record:
    """What the commands know of one mount."""

    mountpoint: str
    backing: str
    pidfile: str
    socket: str
    log: str
    crashes: int = 0

    @staticmethod
    def path_for(mountpoint: str) -> str:
        return os.path.join(run_dir(), hashlib.sha1(mountpoint.encode()).hexdigest()[:16] + ".json")

    @classmethod
    def load(cls, mountpoint: str) -> Record | None:
        try:
            with open(cls.path_for(mountpoint)) as source:
                return cls(**json.load(source))
        except FileNotFoundError:
            return None

    def save(self) -> None:
        path = self.path_for(self.mountpoint)
        os.makedirs(os.path.dirname(path), exist_ok=True)  # the daemon's own files may live elsewhere
        with open(path + ".tmp", "w") as out:
            json.dump(attrs.asdict(self), out)
        os.replace(path + ".tmp", path)

    def remove(self) -> None:
        try:
            os.unlink(self.path_for(self.mountpoint))
        except FileNotFoundError:
            pass


def default_record(backing: str, mountpoint: str, pidfile: str | None, log: str | None) -> Record:
    """A record with the run directory's default paths for what was not given."""
    base = os.path.join(run_dir(), hashlib.sha1(mountpoint.encode()).hexdigest()[:16])
    pidfile = os.path.abspath(pidfile) if pidfile else base + ".pid"
    sock = os.path.splitext(pidfile)[0] + ".sock"
    if len(os.fsencode(sock)) > _SOCKET_PATH_MAX:
        sock = base + ".sock"
    return Record(mountpoint, backing, pidfile, sock, os.path.abspath(log) if log else base + ".log")


# --- the daemon ----------------------------------------------------------------------------------

def daemon_pid(record: Record) -> int | None:
    """The pid of the record's daemon if it is alive (and is a lazyfs daemon), else None."""
    try:
        with open(record.pidfile) as source:
            pid = int(source.read().strip())
        with open(f"/proc/{pid}/cmdline", "rb") as source:
            argv = source.read().split(b"\0")
        with open(f"/proc/{pid}/stat") as source:
            state = source.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, ValueError):
        return None
    if state in ("Z", "X") or b"dynacheck.lazyfs" not in argv or os.fsencode(record.mountpoint) not in argv:
        return None
    return pid


def query(record: Record, timeout: float = 5.0) -> dict[str, Any]:
    """The daemon's status through its control socket."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(timeout)
        conn.connect(record.socket)
        conn.sendall(b'{"op": "status"}\n')
        data = b""
        while not data.endswith(b"\n"):
            chunk = conn.recv(65536)
            if not chunk:
                break
            data += chunk
    return json.loads(data)


def _answers(record: Record) -> bool:
    try:
        query(record, timeout=1.0)
    except (OSError, ValueError):
        return False
    return True


def _log_tail(record: Record, lines: int = 15) -> str:
    try:
        with open(record.log, errors="replace") as source:
            return "".join(source.readlines()[-lines:])
    except FileNotFoundError:
        return ""


def _reap(pid: int) -> None:
    """Collect ``pid`` if it is our child (only when these functions run inside a test)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _gone(record: Record, pid: int) -> Callable[[], bool]:
    def check() -> bool:
        _reap(pid)
        return daemon_pid(record) != pid
    return check


def start_daemon(record: Record) -> int:
    """Start the daemon detached in its own session and return once the mount is live."""
    for path in (record.pidfile, record.socket, record.log):
        os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(record.log, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "dynacheck.lazyfs", "serve", record.backing, record.mountpoint,
             "--socket", record.socket, "--pidfile", record.pidfile],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd="/",
            close_fds=True)

    def live() -> bool:
        if process.poll() is not None:
            return True
        entry = mount_at(record.mountpoint)
        return entry is not None and entry[0] == FSTYPE and _answers(record)

    if not wait_until(live, MOUNT_DEADLINE_SECONDS, interval=0.02) or process.returncode is not None:
        if process.returncode is None:
            process.kill()
            process.wait()
            detach(record.mountpoint)
        raise LazyFSError(f"cannot mount {record.backing} on {record.mountpoint} "
                          f"(daemon exit {process.returncode}); log {record.log}:\n{_log_tail(record)}")
    return process.pid


# --- unmounting ----------------------------------------------------------------------------------

def _umount2(mountpoint: str, flags: int) -> int:
    """umount2(2): 0, or the errno."""
    if os.geteuid() != 0:
        command = ["fusermount3", "-u", *(["-z"] if flags & _MNT_DETACH else []), mountpoint]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode == 0:
            return 0
        return errno.EBUSY if "busy" in done.stderr.lower() else errno.EINVAL
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.umount2(os.fsencode(mountpoint), flags) == 0:
        return 0
    return ctypes.get_errno()


def detach(mountpoint: str) -> None:
    """Lazily unmount whatever is on ``mountpoint`` (a dead FUSE mount included)."""
    if mount_at(mountpoint) is not None:
        _umount2(mountpoint, _MNT_DETACH)


def unmount_busy_aware(mountpoint: str, deadline_seconds: float, lazy_fallback: bool) -> str:
    """Unmount, retrying while the mount is busy; then detach lazily when ``lazy_fallback``, else
    fail. Returns "unmounted" or "detached"."""
    outcome: list[int] = []

    def attempt() -> bool:
        if mount_at(mountpoint) is None:
            return True
        outcome.append(_umount2(mountpoint, 0))
        return outcome[-1] in (0, errno.EINVAL, errno.ENOENT)

    if wait_until(attempt, deadline_seconds, interval=0.1):
        return "unmounted"
    busy = f"{mountpoint} is busy: processes still have files open there (see `fuser -vm {mountpoint}`)"
    if not lazy_fallback:
        raise LazyFSError(f"{busy}; not unmounted (error {errno.errorcode.get(outcome[-1], outcome[-1])})")
    print(f"lazyfs: {busy}; detached lazily, their open files now fail", file=sys.stderr)
    if _umount2(mountpoint, _MNT_DETACH) != 0:
        raise LazyFSError(f"cannot detach {mountpoint}")
    return "detached"


# --- the commands --------------------------------------------------------------------------------

def _paths(backing: str | None, mountpoint: str) -> tuple[str | None, str]:
    mountpoint = os.path.realpath(mountpoint)
    return (os.path.realpath(backing) if backing is not None else None), mountpoint


def mount(backing: str, mountpoint: str, pidfile: str | None = None, log: str | None = None) -> dict[str, Any]:
    """Mount ``backing`` on ``mountpoint`` (idempotent when we already did)."""
    real_backing, mountpoint = _paths(backing, mountpoint)
    assert real_backing is not None
    if real_backing == mountpoint or real_backing.startswith(mountpoint + os.sep):
        raise LazyFSError(f"the backing dir {real_backing} must not lie inside the mountpoint {mountpoint}")
    previous = Record.load(mountpoint)
    entry = mount_at(mountpoint)
    if previous is not None and daemon_pid(previous) is not None and entry is not None and entry[0] == FSTYPE:
        if previous.backing != real_backing:
            raise LazyFSError(f"{mountpoint} is already a lazyfs mount of {previous.backing}, not {real_backing}")
        return {"mountpoint": mountpoint, "backing": real_backing, "pid": daemon_pid(previous), "already": True}
    if entry is not None and entry[0] != FSTYPE:
        raise LazyFSError(f"{mountpoint} already has a {entry[0]} file system mounted on it")
    if entry is not None:
        detach(mountpoint)  # our daemon died: a dead mount is left behind
    os.makedirs(real_backing, exist_ok=True)
    os.makedirs(mountpoint, exist_ok=True)
    if os.listdir(mountpoint):
        raise LazyFSError(f"{mountpoint} is not empty: mounting would hide its files (move them into {real_backing})")
    record = default_record(real_backing, mountpoint, pidfile, log)
    if previous is not None and previous.backing == real_backing:
        record.crashes = previous.crashes
    pid = start_daemon(record)
    record.save()
    return {"mountpoint": mountpoint, "backing": real_backing, "pid": pid, "already": False}


def _record_of(mountpoint: str) -> Record:
    record = Record.load(mountpoint)
    if record is None:
        raise LazyFSError(f"{mountpoint} is not a lazyfs mount of this host (no record in {run_dir()})")
    return record


def crash(mountpoint: str) -> dict[str, Any]:
    """Lose every unsynced change: kill -9 the daemon, unmount, mount the backing dir afresh."""
    _, mountpoint = _paths(None, mountpoint)
    record = _record_of(mountpoint)
    pid = daemon_pid(record)
    lost = {"pending_files": 0, "pending_bytes": 0}
    if pid is not None:
        try:
            lost = {key: query(record)[key] for key in lost}
        except (OSError, ValueError, KeyError):
            pass  # still crash; what was lost is then unknown
        os.kill(pid, signal.SIGKILL)
        if not wait_until(_gone(record, pid), MOUNT_DEADLINE_SECONDS, interval=0.02):
            raise LazyFSError(f"the lazyfs daemon {pid} of {mountpoint} did not die on SIGKILL")
    how = unmount_busy_aware(mountpoint, BUSY_DEADLINE_SECONDS, lazy_fallback=True)
    record.crashes += 1
    new_pid = start_daemon(record)
    record.save()
    return {"mountpoint": mountpoint, "lost_files": lost["pending_files"], "lost_bytes": lost["pending_bytes"],
            "old_mount": how, "pid": new_pid, "crashes": record.crashes}


def unmount(mountpoint: str) -> dict[str, Any]:
    """Unmount cleanly: the daemon flushes every pending change to the backing dir, then exits."""
    _, mountpoint = _paths(None, mountpoint)
    record = Record.load(mountpoint)
    entry = mount_at(mountpoint)
    if record is None:
        if entry is not None and entry[0] == FSTYPE:
            detach(mountpoint)  # ours, but its record is gone: nothing to flush to any more
            return {"mountpoint": mountpoint, "unmounted": True, "flushed_bytes": None}
        return {"mountpoint": mountpoint, "unmounted": False, "flushed_bytes": 0}
    pid = daemon_pid(record)
    flushed = None
    if pid is not None:
        try:
            flushed = query(record)["pending_bytes"]
        except (OSError, ValueError, KeyError):
            pass
    if entry is not None:
        unmount_busy_aware(mountpoint, BUSY_DEADLINE_SECONDS, lazy_fallback=pid is None)
    if pid is not None and not wait_until(_gone(record, pid), UNMOUNT_DEADLINE_SECONDS, interval=0.02):
        raise LazyFSError(f"the lazyfs daemon {pid} is still flushing after {UNMOUNT_DEADLINE_SECONDS:.0f} s "
                          f"(see {record.log})")
    record.remove()
    return {"mountpoint": mountpoint, "unmounted": entry is not None, "flushed_bytes": flushed}


def status(mountpoint: str) -> dict[str, Any]:
    """Whether the mount is live, and the daemon's pending data and counters."""
    _, mountpoint = _paths(None, mountpoint)
    record = Record.load(mountpoint)
    entry = mount_at(mountpoint)
    result: dict[str, Any] = {"mountpoint": mountpoint, "mounted": False, "pid": None,
                              "backing": record.backing if record else None,
                              "crashes": record.crashes if record else 0}
    pid = daemon_pid(record) if record else None
    if record is not None and pid is not None and entry is not None and entry[0] == FSTYPE:
        result.update(mounted=True, pid=pid)
        try:
            daemon = query(record)
        except (OSError, ValueError) as exc:
            result["error"] = f"the daemon does not answer: {exc}"
        else:
            daemon.pop("pid", None)
            daemon.pop("backing", None)
            result.update(daemon)
    elif entry is not None and entry[0] == FSTYPE:
        result["error"] = "a dead lazyfs mount (its daemon is gone): run crash or unmount"
    return result
