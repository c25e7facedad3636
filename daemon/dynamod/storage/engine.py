"""The storage engine seam: what a replica needs from a local key-value store.

An engine stores one encoded ``Record`` per key. Writing is split in two, the way a database
with group commit splits it: ``apply`` commits a transaction without waiting for the disk (on the
event loop: it costs about as much as a read), ``flush`` makes every applied transaction durable
(it blocks on fsync, so ``dynamod.storage.store.Store`` runs it on a thread of its own, one flush
for every write applied while the previous one ran). Every engine passes the same conformance
suite (tests/unit/test_storage_conformance.py).
"""

from __future__ import annotations

import abc
import os
from collections.abc import Callable, Iterator
from typing import Any

from dynamod.core.encoding import DecodeError, decode_record
from dynamod.core.versions import Record

#: ``fn(record_or_None, allocate_actor) -> (new_record_or_None, result)``: a pure update of one key.
UpdateFn = Callable[[Record | None, Callable[[], str]], tuple[Record | None, Any]]

#: One write: the key and its new encoded record, or None to delete it.
Write = tuple[bytes, bytes | None]


class CorruptRecord(Exception):
    """A stored record that does not decode: reported to readers, never silently treated as absent;
    an update treats it as "nothing usable here" (``Store.stage``)."""

    def __init__(self, key: bytes, reason: str):
        super().__init__(f"stored record for key {key!r} does not decode: {reason}")
        self.key = key
        self.reason = reason


class EnvironmentFailed(Exception):
    """The engine as a whole can no longer be trusted (a page checksum failed, the environment
    panicked): nothing it holds may be served or sent, and the node must reopen it (the open-time
    checks then move it aside and salvage what verifies)."""


def new_incarnation() -> str:
    """A fresh, random node incarnation id (64 bits, hex)."""
    return os.urandom(8).hex()


def decode_stored(key: bytes, raw: bytes | None) -> Record | None:
    """Decode a stored record, turning codec failures into ``CorruptRecord``."""
    if raw is None:
        return None
    try:
        return decode_record(raw)
    except DecodeError as exc:
        raise CorruptRecord(key, str(exc)) from exc


class StorageEngine(abc.ABC):
    """A local, durable map from key to encoded record, written in atomic transactions.

    ``incarnation`` is fresh for an empty data dir; ``epoch`` is the highest actor epoch durably
    reserved (see ``Store``'s actor allocation): no epoch above it was ever handed out."""

    incarnation: str
    epoch: int
    #: What the open-time checks found and did (a damaged environment moved aside), else None.
    recovery: dict[str, Any] | None = None

    @abc.abstractmethod
    def read_raw(self, key: bytes) -> bytes | None:
        """The newest applied bytes for ``key``, or None. Never waits for a flush."""

    @abc.abstractmethod
    def apply(self, writes: list[Write]) -> None:
        """Commit every write in one transaction, all or nothing, without waiting for the disk:
        readable at once, durable once a ``flush`` that started after it returns."""

    @abc.abstractmethod
    def flush(self) -> None:
        """Make every transaction applied so far durable (blocks on the disk)."""

    @abc.abstractmethod
    def reserve_epochs(self, epoch: int) -> None:
        """Durably record ``epoch`` as the new reservation, before returning (one synchronous
        commit; rare, see ``Store.allocate_actor``)."""

    @abc.abstractmethod
    def keys(self) -> Iterator[bytes]:
        """Every stored key (for tests and, later, anti-entropy)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Flush and release everything."""

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        """Every stored ``(key, encoded record)``, undecoded (the start-up scan)."""
        for key in list(self.keys()):
            raw = self.read_raw(key)
            if raw is not None:
                yield key, raw

    def mark_damaged(self, reason: str) -> None:  # noqa: B027 - nothing to remember without a disk
        """Remember durably that the environment failed, so the next open moves it aside."""

    def maintain(self) -> None:  # noqa: B027 - a no-op unless the engine needs housekeeping
        """Periodic housekeeping (checkpoints); runs on its own thread, concurrently with commits
        and flushes."""

    def read(self, key: bytes) -> Record | None:
        """The decoded record for ``key``; raises ``CorruptRecord`` when it does not decode."""
        return decode_stored(key, self.read_raw(key))

    def read_many(self, keys: list[bytes]) -> list[Any]:
        """Decoded records for ``keys``: one entry each, the record, None, or the exception
        (``CorruptRecord``) that reading that key raised."""
        results: list[Any] = []
        for key in keys:
            try:
                results.append(self.read(key))
            except Exception as exc:  # noqa: BLE001 - reported to that key's caller
                results.append(exc)
        return results
