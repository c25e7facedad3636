"""The pure half of lazyfs: what a file holds that was written but not yet fsynced.

Like Jepsen's LazyFS ("lose-unsynced-writes"), data written through the mount stays in memory, per
file, until the file is fsynced; a crash drops it. ``PendingFile`` keeps the changes since the last
fsync as what they amount to, not as a log: the file's logical size, how much of the backing file is
still visible (a truncate hides the backing bytes past it, even if the file grows again), and the
bytes written since, as sorted non-overlapping extents. A read is the backing file overlaid with
them; an fsync turns them into a ``FlushPlan`` of at most one shrink, the extents and one resize.
Nothing here does I/O: the backing file is reached through the ``read_base`` argument.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Hashable, Iterator

import attrs

#: ``read_base(offset, count) -> bytes``: the backing file's bytes (shorter at its end).
ReadBase = Callable[[int, int], bytes]


@attrs.frozen
class FlushPlan:
    """What makes the backing file equal to the file as seen through the mount: truncate it to
    ``shrink_to`` (when set), write each ``(offset, data)`` extent, then set its size to ``size``."""

    shrink_to: int | None
    extents: list[tuple[int, bytes]]
    size: int


class PendingFile:
    """The unsynced changes of one file, over a backing file that was ``synced_size`` bytes long
    when they began."""

    def __init__(self, synced_size: int):
        self.synced_size = synced_size
        self.size = synced_size
        # Backing bytes at and past this offset read as zeros (a truncate cut them off).
        self.base_limit = synced_size
        self._starts: list[int] = []
        self._bufs: list[bytearray] = []

    @property
    def pending_bytes(self) -> int:
        """Bytes of written data held in memory."""
        return sum(len(buf) for buf in self._bufs)

    def extents(self) -> Iterator[tuple[int, bytes]]:
        """The written extents, in offset order."""
        for start, buf in zip(self._starts, self._bufs, strict=True):
            yield start, bytes(buf)

    def write(self, offset: int, data: bytes) -> None:
        """Record ``data`` written at ``offset`` (the file grows to cover it)."""
        if not data:
            return
        end = offset + len(data)
        self.size = max(self.size, end)
        # The extent that starts at or before ``offset``: when it reaches ``offset`` the write goes
        # into it in place (appends, the common case, stay one extent and cost O(len(data))).
        index = bisect.bisect_right(self._starts, offset) - 1
        if index >= 0 and self._starts[index] + len(self._bufs[index]) >= offset:
            buf = self._bufs[index]
            at = offset - self._starts[index]
            if end <= self._starts[index] + len(buf):
                buf[at:at + len(data)] = data
                return
            buf[at:] = data
        else:
            index += 1
            self._starts.insert(index, offset)
            self._bufs.insert(index, bytearray(data))
        self._cut_after(index, end)

    def _cut_after(self, index: int, end: int) -> None:
        """Drop or trim the extents after ``index`` that the write ending at ``end`` covered."""
        following = index + 1
        while following < len(self._starts) and self._starts[following] < end:
            start, buf = self._starts[following], self._bufs[following]
            if start + len(buf) <= end:
                del self._starts[following], self._bufs[following]
            else:
                # CPython trims a bytearray's head without copying the rest.
                del buf[:end - start]
                self._starts[following] = end
                break

    def truncate(self, length: int) -> None:
        """Record a truncate (or extension with zeros) to ``length`` bytes."""
        if length < self.size:
            self.base_limit = min(self.base_limit, length)
            index = bisect.bisect_left(self._starts, length)
            del self._starts[index:], self._bufs[index:]
            if self._starts:
                last_start, last = self._starts[-1], self._bufs[-1]
                if last_start + len(last) > length:
                    del last[length - last_start:]
        self.size = length

    def read(self, offset: int, count: int, read_base: ReadBase) -> bytes:
        """The file's bytes at ``offset`` (at most ``count``, fewer at its end)."""
        end = min(offset + count, self.size)
        if end <= offset:
            return b""
        base_end = min(end, self.base_limit)
        out = bytearray(read_base(offset, base_end - offset)) if base_end > offset else bytearray()
        # Past the backing file's visible part (or its actual end) the file reads as zeros.
        out.extend(bytes(end - offset - len(out)))
        index = max(0, bisect.bisect_right(self._starts, offset) - 1)
        while index < len(self._starts) and self._starts[index] < end:
            start, buf = self._starts[index], self._bufs[index]
            lo, hi = max(start, offset), min(start + len(buf), end)
            if lo < hi:
                out[lo - offset:hi - offset] = buf[lo - start:hi - start]
            index += 1
        return bytes(out)

    def flush_plan(self) -> FlushPlan:
        """How to apply these changes to the backing file (see ``FlushPlan``)."""
        shrink_to = self.base_limit if self.base_limit < self.synced_size else None
        return FlushPlan(shrink_to, list(self.extents()), self.size)


@attrs.frozen
class PendingStats:
    """How much unsynced data a ``PendingState`` holds."""

    files: int
    bytes: int


class PendingState:
    """The pending files of one mount, by file identity (the backing inode, so a rename keeps them
    and a hard link shares them)."""

    def __init__(self) -> None:
        self._files: dict[Hashable, PendingFile] = {}

    def __contains__(self, key: Hashable) -> bool:
        return key in self._files

    def get(self, key: Hashable) -> PendingFile | None:
        """The file's pending changes, or None when it has none."""
        return self._files.get(key)

    def begin(self, key: Hashable, synced_size: int) -> PendingFile:
        """The file's pending changes, started over a backing file of ``synced_size`` bytes if new."""
        pending = self._files.get(key)
        if pending is None:
            pending = self._files[key] = PendingFile(synced_size)
        return pending

    def take(self, key: Hashable) -> FlushPlan | None:
        """Remove the file's pending changes and return how to apply them (None when clean): the
        first half of an fsync."""
        pending = self._files.pop(key, None)
        return None if pending is None else pending.flush_plan()

    def drop(self, key: Hashable) -> None:
        """Forget the file's pending changes (the file is gone)."""
        self._files.pop(key, None)

    def keys(self) -> list[Hashable]:
        """Every file with pending changes."""
        return list(self._files)

    def crash(self) -> PendingStats:
        """Drop every pending change; returns what was lost."""
        lost = self.stats()
        self._files.clear()
        return lost

    def stats(self) -> PendingStats:
        """Files with pending changes and the written bytes they hold."""
        return PendingStats(len(self._files), sum(p.pending_bytes for p in self._files.values()))


def apply_plan(plan: FlushPlan, truncate: Callable[[int], None], pwrite: Callable[[bytes, int], object]) -> None:
    """Carry out ``plan`` with the backing file's ``truncate(length)`` and ``pwrite(data, offset)``."""
    if plan.shrink_to is not None:
        truncate(plan.shrink_to)
    for offset, data in plan.extents:
        pwrite(data, offset)
    truncate(plan.size)
