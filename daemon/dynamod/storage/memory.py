"""An in-memory engine for tests and simulations: same contract as Berkeley DB, no durability."""

from __future__ import annotations

import threading
from collections.abc import Iterator

from dynamod.storage.engine import StorageEngine, Write, new_incarnation


class MemoryEngine(StorageEngine):
    """Records in a dict; a transaction applies atomically under a lock."""

    def __init__(self, incarnation: str | None = None):
        self.incarnation = incarnation or new_incarnation()
        self.data: dict[bytes, bytes] = {}
        self.epoch = 0
        self._lock = threading.Lock()

    def read_raw(self, key: bytes) -> bytes | None:
        return self.data.get(key)

    def apply(self, writes: list[Write]) -> None:
        with self._lock:
            for key, raw in writes:
                if raw is None:
                    self.data.pop(key, None)
                else:
                    self.data[key] = raw

    def flush(self) -> None:
        pass

    def reserve_epochs(self, epoch: int) -> None:
        self.epoch = max(self.epoch, epoch)

    def keys(self) -> Iterator[bytes]:
        return iter(sorted(self.data))

    def close(self) -> None:
        pass
