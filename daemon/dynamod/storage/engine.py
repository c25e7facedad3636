"""The storage engine seam: what a replica needs from a local key-value store.

An engine stores one encoded ``Record`` per key. Engines are synchronous and may block (Berkeley
DB commits with fsync); ``dynamod.storage.store.Store`` runs them off the reactor thread and
gathers concurrent updates into one transaction (group commit). Every engine passes the same
conformance suite (tests/unit/test_storage_conformance.py).
"""

from __future__ import annotations

import abc
import os
from collections.abc import Callable, Iterator
from typing import Any

from dynamod.core.encoding import DecodeError, decode_record, encode_record
from dynamod.core.versions import Record

#: ``fn(record_or_None, allocate_actor) -> (new_record_or_None, result)``: a pure update of one key.
UpdateFn = Callable[[Record | None, Callable[[], str]], tuple[Record | None, Any]]


class CorruptRecord(Exception):
    """A stored record that does not decode: reported, never silently treated as absent."""

    def __init__(self, key: bytes, reason: str):
        super().__init__(f"stored record for key {key!r} does not decode: {reason}")
        self.key = key
        self.reason = reason


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
    """A local, durable map from key to encoded record with one-transaction batch updates."""

    node_id: str
    incarnation: str

    @abc.abstractmethod
    def read_raw(self, key: bytes) -> bytes | None:
        """The stored bytes for ``key``, or None."""

    @abc.abstractmethod
    def _transaction(self) -> Any:
        """Context manager yielding a transaction handle ``txn`` with ``get(key)``, ``put(key, raw)``,
        ``delete(key)`` and ``next_epoch()``; commits on success, aborts on exception."""

    @abc.abstractmethod
    def keys(self) -> Iterator[bytes]:
        """Every stored key (for tests and, later, anti-entropy)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Flush and release everything."""

    def maintain(self) -> None:  # noqa: B027 - a no-op unless the engine needs housekeeping
        """Periodic housekeeping (checkpoints); runs on its own thread, concurrently with batches."""

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

    def apply_batch(self, updates: list[tuple[bytes, UpdateFn]]) -> list[Any]:
        """Apply every update in order inside one transaction, then commit once.

        Returns one entry per update: its result, or the exception it raised (that update alone
        is skipped; a corrupt record fails only the updates of its key)."""
        results: list[Any] = []
        with self._transaction() as txn:
            staged: dict[bytes, Record | None] = {}
            for key, fn in updates:
                try:
                    current = staged[key] if key in staged else decode_stored(key, txn.get(key))
                    new, result = fn(current, lambda: f"{self.node_id}~{self.incarnation}.{txn.next_epoch()}")
                except Exception as exc:  # noqa: BLE001 - reported to that update's caller
                    results.append(exc)
                    continue
                staged[key] = new
                results.append(result)
            for key, record in staged.items():
                if record is None:
                    txn.delete(key)
                else:
                    txn.put(key, encode_record(record))
        return results
