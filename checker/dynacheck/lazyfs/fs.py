"""The FUSE shell of lazyfs (the only module that imports mfusepy): a passthrough file system over
a backing directory whose file data waits in a ``PendingState`` until the file is fsynced.

Metadata operations (create, mkdir, unlink, rename, chmod, utimens, links) go to the backing
directory at once, like LazyFS's default. Writes, truncates and ``fallocate`` stay in this process's
memory; reads see them over the backing file; ``fsync``/``fdatasync`` (or a write through an
``O_SYNC``/``O_DSYNC`` handle) applies them to the backing file and fsyncs it there. So killing this
process loses exactly the unsynced data: that is how ``crash`` works. A clean unmount flushes
everything first (``destroy``). Files are never ``direct_io``, so shared writable ``mmap`` (Berkeley
DB's region files) works through the kernel page cache; locks are left to the kernel (no ``lock``
or ``flock`` operation: FUSE then keeps POSIX and BSD locks locally, which is what processes on one
machine need).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socketserver
import threading
from typing import Any

import attrs
import mfusepy as fuse

from dynacheck.lazyfs.model import PendingFile, PendingState, apply_plan

log = logging.getLogger("dynacheck.lazyfs")

_FALLOC_FL_KEEP_SIZE = 0x01
_STAT_FIELDS = ("st_mode", "st_ino", "st_nlink", "st_uid", "st_gid", "st_rdev", "st_size", "st_blksize", "st_blocks")


@attrs.define(eq=False)
class Inode:
    """A backing file that is open through the mount or has pending changes: ``fd`` (read-write)
    pins it, so its identity ``key`` cannot be reused while we hold data for it."""

    key: tuple[int, int]
    fd: int
    opens: int = 0


@attrs.define(eq=False)
class Handle:
    """One ``open`` through the mount; ``sync`` for ``O_SYNC``/``O_DSYNC`` handles."""

    inode: Inode
    sync: bool


@attrs.define
class Counters:
    """What the daemon did since it started."""

    writes: int = 0
    written_bytes: int = 0
    truncates: int = 0
    fsyncs: int = 0
    flushed_bytes: int = 0


class LazyOperations(fuse.Operations):
    """The file system: every path is the same path under ``backing``."""

    use_ns = True

    def __init__(self, backing: str):
        self.backing = os.path.realpath(backing)
        self.state = PendingState()
        self.counters = Counters()
        # One lock for the tables and the pending state; fsyncs of the backing files run outside it.
        self._mutex = threading.Lock()
        self.inodes: dict[tuple[int, int], Inode] = {}
        self.handles: dict[int, Handle] = {}
        self._next_fh = 1
        self._chown_to_caller = os.geteuid() == 0

    def _real(self, path: str) -> str:
        return os.path.join(self.backing, path.lstrip("/"))

    def _adopt(self, real: str) -> None:
        """Give a new backing entry to the calling user, as a kernel file system would."""
        if self._chown_to_caller:
            uid, gid, _ = fuse.fuse_get_context()
            if (uid, gid) != (0, 0):
                os.lchown(real, uid, gid)

    # --- the inode and handle tables (call with the lock held) ---------------------------------

    def _pin(self, fd: int) -> Inode:
        """The inode of the freshly opened backing ``fd``: a new entry, or the existing one (then
        ``fd`` is closed)."""
        st = os.fstat(fd)
        key = (st.st_dev, st.st_ino)
        inode = self.inodes.get(key)
        if inode is None:
            inode = self.inodes[key] = Inode(key, fd)
        else:
            os.close(fd)
        return inode

    def _release_if_idle(self, inode: Inode) -> None:
        """Close an inode nobody has open: kept while it has pending data, unless it was unlinked
        (nobody can read that data again)."""
        if inode.opens or self.inodes.get(inode.key) is not inode:
            return
        if inode.key in self.state and os.fstat(inode.fd).st_nlink > 0:
            return
        self.state.drop(inode.key)
        del self.inodes[inode.key]
        os.close(inode.fd)

    def _open_handle(self, fd: int, flags: int) -> int:
        inode = self._pin(fd)
        inode.opens += 1
        fh = self._next_fh
        self._next_fh += 1
        self.handles[fh] = Handle(inode, bool(flags & (os.O_SYNC | os.O_DSYNC)))
        if flags & os.O_TRUNC:
            self._truncate(inode, 0)
        return fh

    def _pending(self, inode: Inode) -> PendingFile:
        pending = self.state.get(inode.key)
        if pending is None:
            pending = self.state.begin(inode.key, os.fstat(inode.fd).st_size)
        return pending

    def _truncate(self, inode: Inode, length: int) -> None:
        self._pending(inode).truncate(length)
        self.counters.truncates += 1

    def _sync(self, inode: Inode, datasync: bool = False) -> None:
        """Apply the inode's pending changes to the backing file, then fsync it there."""
        with self._mutex:
            plan = self.state.take(inode.key)
            if plan is not None:
                apply_plan(plan, lambda length: os.ftruncate(inode.fd, length),
                           lambda data, offset: os.pwrite(inode.fd, data, offset))
                self.counters.flushed_bytes += sum(len(data) for _, data in plan.extents)
            self.counters.fsyncs += 1
        (os.fdatasync if datasync else os.fsync)(inode.fd)
        with self._mutex:
            self._release_if_idle(inode)

    def _inode_at(self, real: str) -> Inode | None:
        try:
            st = os.lstat(real)
        except FileNotFoundError:
            return None
        return self.inodes.get((st.st_dev, st.st_ino))

    # --- data ------------------------------------------------------------------------------------

    def open(self, path: str, flags: int) -> int:
        fd = os.open(self._real(path), os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
        with self._mutex:
            return self._open_handle(fd, flags)

    def create(self, path: str, mode: int, flags: int) -> int:
        real = self._real(path)
        fd = os.open(real, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | (flags & os.O_EXCL), mode)
        self._adopt(real)
        with self._mutex:
            return self._open_handle(fd, flags)

    def release(self, path: str, fh: int) -> int:
        with self._mutex:
            handle = self.handles.pop(fh)
            handle.inode.opens -= 1
            self._release_if_idle(handle.inode)
        return 0

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        with self._mutex:
            inode = self.handles[fh].inode
            pending = self.state.get(inode.key)
            if pending is None:
                return os.pread(inode.fd, size, offset)
            return pending.read(offset, size, lambda at, count: os.pread(inode.fd, count, at))

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        with self._mutex:
            handle = self.handles[fh]
            self._pending(handle.inode).write(offset, data)
            self.counters.writes += 1
            self.counters.written_bytes += len(data)
        if handle.sync:
            self._sync(handle.inode, datasync=True)
        return len(data)

    def truncate(self, path: str, length: int, fh: int | None = None) -> int:
        # libfuse 3 hands over no file handle here: find (or pin) the inode by path.
        fd = os.open(self._real(path), os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
        with self._mutex:
            inode = self._pin(fd)
            self._truncate(inode, length)
        return 0

    def fallocate(self, path: str, mode: int, offset: int, size: int, fh: int) -> int:
        # Allocation itself means nothing here; only its effect on the size is pending data.
        if mode & ~_FALLOC_FL_KEEP_SIZE:
            raise fuse.FuseOSError(errno.EOPNOTSUPP)
        with self._mutex:
            pending = self._pending(self.handles[fh].inode)
            if not mode & _FALLOC_FL_KEEP_SIZE and offset + size > pending.size:
                pending.truncate(offset + size)
        return 0

    def fsync(self, path: str, datasync: int, fh: int) -> int:
        with self._mutex:
            inode = self.handles[fh].inode
        self._sync(inode, bool(datasync))
        return 0

    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        with self._mutex:
            handle = self.handles.get(fh) if fh is not None else None
            st = os.fstat(handle.inode.fd) if handle is not None else None
        if st is None:
            st = os.lstat(self._real(path))
        attrs_ = {name: getattr(st, name) for name in _STAT_FIELDS}
        attrs_.update(st_atime=st.st_atime_ns, st_mtime=st.st_mtime_ns, st_ctime=st.st_ctime_ns)
        with self._mutex:
            pending = self.state.get((st.st_dev, st.st_ino))
            if pending is not None:
                attrs_["st_size"] = pending.size
                attrs_["st_blocks"] = max(st.st_blocks, (pending.size + 511) // 512)
        return attrs_

    def destroy(self, path: str) -> None:
        """A clean unmount: flush every pending change, so it is not a crash."""
        with self._mutex:
            inodes = [self.inodes[key] for key in self.state.keys()]
            lost = self.state.stats()
        for inode in inodes:
            self._sync(inode)
        log.info("unmounted: flushed %d files, %d bytes", lost.files, lost.bytes)

    # --- metadata: straight to the backing directory ---------------------------------------------

    def mkdir(self, path: str, mode: int) -> int:
        real = self._real(path)
        os.mkdir(real, mode)
        self._adopt(real)
        return 0

    def mknod(self, path: str, mode: int, dev: int) -> int:
        real = self._real(path)
        os.mknod(real, mode, dev)
        self._adopt(real)
        return 0

    def symlink(self, target: str, source: str) -> int:
        real = self._real(target)
        os.symlink(source, real)
        self._adopt(real)
        return 0

    def link(self, target: str, source: str) -> int:
        os.link(self._real(source), self._real(target))
        return 0

    def readlink(self, path: str) -> str:
        return os.readlink(self._real(path))

    def unlink(self, path: str) -> int:
        real = self._real(path)
        with self._mutex:
            inode = self._inode_at(real)
            os.unlink(real)
            if inode is not None:
                self._release_if_idle(inode)
        return 0

    def rmdir(self, path: str) -> int:
        os.rmdir(self._real(path))
        return 0

    def rename(self, old: str, new: str) -> int:
        real_new = self._real(new)
        with self._mutex:
            replaced = self._inode_at(real_new)
            os.rename(self._real(old), real_new)
            if replaced is not None:
                self._release_if_idle(replaced)
        return 0

    def chmod(self, path: str, mode: int) -> int:
        os.chmod(self._real(path), mode)
        return 0

    def chown(self, path: str, uid: int, gid: int) -> int:
        os.lchown(self._real(path), uid, gid)
        return 0

    def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
        if times is None:
            os.utime(self._real(path), follow_symlinks=False)
        else:
            os.utime(self._real(path), ns=times, follow_symlinks=False)
        return 0

    def readdir(self, path: str, fh: int) -> list[tuple[str, dict[str, int], int]]:
        # With use_ino the kernel skips entries whose inode is 0: every entry needs its st_ino.
        real = self._real(path)
        here = os.lstat(real)
        entries = [(".", {"st_ino": here.st_ino, "st_mode": here.st_mode}, 0),
                   ("..", {"st_ino": here.st_ino, "st_mode": here.st_mode}, 0)]
        with os.scandir(real) as listing:
            for entry in listing:
                mode = entry.stat(follow_symlinks=False).st_mode
                entries.append((entry.name, {"st_ino": entry.inode(), "st_mode": mode}, 0))
        return entries

    def fsyncdir(self, path: str, datasync: int, fh: int) -> int:
        fd = os.open(self._real(path), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        return 0

    def statfs(self, path: str) -> dict[str, int]:
        st = os.statvfs(self._real(path))
        return {name: getattr(st, name) for name in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail",
                                                     "f_files", "f_ffree", "f_favail", "f_flag", "f_namemax")}

    # --- what the control socket reports ---------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Pending data and counters, as ``status`` prints them."""
        with self._mutex:
            pending = self.state.stats()
            return {"pending_files": pending.files, "pending_bytes": pending.bytes, "open_handles": len(self.handles),
                    **attrs.asdict(self.counters)}


class _ControlHandler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        request = json.loads(self.rfile.readline() or b"{}")
        server: _ControlServer = self.server  # type: ignore[assignment]
        if request.get("op") == "status":
            answer = {"pid": os.getpid(), "backing": server.operations.backing, **server.operations.status()}
        else:
            answer = {"error": f"unknown op {request.get('op')!r}"}
        self.wfile.write(json.dumps(answer).encode() + b"\n")


class _ControlServer(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True

    def __init__(self, path: str, operations: LazyOperations):
        self.operations = operations
        super().__init__(path, _ControlHandler)


def serve(backing: str, mountpoint: str, socket_path: str, pidfile: str) -> int:
    """Run the file system in the foreground until it is unmounted (or this process is killed)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Modes come from the kernel already masked by the caller's umask.
    os.umask(0)
    operations = LazyOperations(backing)
    if os.path.exists(socket_path):
        os.unlink(socket_path)
    control = _ControlServer(socket_path, operations)
    threading.Thread(target=control.serve_forever, name="lazyfs-control", daemon=True).start()
    with open(pidfile, "w") as out:
        out.write(f"{os.getpid()}\n")
    log.info("mounting %s on %s (pid %d)", operations.backing, mountpoint, os.getpid())
    try:
        fuse.FUSE(operations, mountpoint, foreground=True, allow_other=True, default_permissions=True,
                  use_ino=True, fsname="lazyfs", subtype="lazyfs")
    except RuntimeError as exc:
        log.error("mount failed: %s", exc)
        return 1
    finally:
        control.shutdown()
        control.server_close()
        for path in (socket_path, pidfile):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
    return 0
