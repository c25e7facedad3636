"""An in-memory engine for tests and simulations: same contract as Berkeley DB, no durability."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from dynamod.storage.engine import StorageEngine, new_incarnation


class _MemoryTransaction:
    def __init__(self, engine: MemoryEngine):
        self._engine = engine
        self._writes: dict[bytes, bytes | None] = {}
        self._epoch = engine.epoch

    def get(self, key: bytes) -> bytes | None:
        if key in self._writes:
            return self._writes[key]
        return self._engine.data.get(key)

    def put(self, key: bytes, raw: bytes) -> None:
        self._writes[key] = raw

    def delete(self, key: bytes) -> None:
        self._writes[key] = None

    def next_epoch(self) -> int:
        self._epoch += 1
        return self._epoch

    def commit(self) -> None:
        for key, raw in self._writes.items():
            if raw is None:
                self._engine.data.pop(key, None)
            else:
                self._engine.data[key] = raw
        self._engine.epoch = self._epoch


class MemoryEngine(StorageEngine):
    """Records in a dict; transactions apply atomically under a lock."""

    def __init__(self, node_id: str = "mem", incarnation: str | None = None):
        self.node_id = node_id
        self.incarnation = incarnation or new_incarnation()
        self.data: dict[bytes, bytes] = {}
        self.epoch = 0
        self._lock = threading.Lock()

    def read_raw(self, key: bytes) -> bytes | None:
        return self.data.get(key)

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[_MemoryTransaction]:
        with self._lock:
            txn = _MemoryTransaction(self)
            yield txn
            txn.commit()

    def keys(self) -> Iterator[bytes]:
        return iter(sorted(self.data))

    def close(self) -> None:
        pass
