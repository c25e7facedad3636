"""The simulated disk of ``dynacheck sim``: the memory engine with a crash's semantics, and the
worker pools that stand in for the node's threads (reads, flushes, housekeeping) on simulated time.

``SimEngine`` keeps what was applied (readable at once, as Berkeley DB's log buffer is) apart
from what a flush made durable: ``crash()`` (kill -9 leaves the OS page cache, so only ``power``
crashes) drops every write applied since the last flush that finished, which is exactly what an
fsync before every acknowledgement exists for. ``lose()`` is a lost disk (``disk``): nothing is
left, a new incarnation starts.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.python.failure import Failure

from dynacheck.sim.world import HostReactor
from dynamod.storage.engine import Write
from dynamod.storage.memory import MemoryEngine


class SimEngine(MemoryEngine):
    """A memory engine whose flushes are what survives a power cut."""

    def __init__(self, incarnation: str):
        super().__init__(incarnation)
        self.durable: dict[bytes, bytes] = {}
        self.durable_epoch = 0
        self._unflushed: list[Write] = []

    def apply(self, writes: list[Write]) -> None:
        super().apply(writes)
        self._unflushed.extend(writes)

    def flush(self) -> None:
        for key, raw in self._unflushed:
            if raw is None:
                self.durable.pop(key, None)
            else:
                self.durable[key] = raw
        self._unflushed.clear()

    def reserve_epochs(self, epoch: int) -> None:
        super().reserve_epochs(epoch)
        self.durable_epoch = self.epoch  # a synchronous commit

    def crash(self) -> int:
        """Power is lost: only what was flushed is left. Returns how many writes were lost."""
        lost = len(self._unflushed)
        self._unflushed.clear()
        self.data = dict(self.durable)
        self.epoch = self.durable_epoch
        return lost

    def corrupt(self, rng: random.Random, flips: int) -> bytes | None:
        """Flip bits in one stored record (both its applied and its durable bytes); returns its key."""
        keys = sorted(self.durable)
        if not keys:
            return None
        key = rng.choice(keys)
        raw = bytearray(self.durable[key])
        for _ in range(flips):
            raw[rng.randrange(len(raw))] ^= 1 << rng.randrange(8)
        self.durable[key] = self.data[key] = bytes(raw)
        return key


class SimWorkers:
    """``count`` simulated threads: each call takes a drawn time, calls run in submission order on
    each thread, and the result arrives on the node's reactor (a killed node's never does)."""

    def __init__(self, reactor: HostReactor, count: int, rng: random.Random, mean_seconds: float):
        self.reactor, self.rng, self.mean = reactor, rng, mean_seconds
        self._free_at = [0.0] * count

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def run(self, fn: Callable[..., Any], *args: Any) -> defer.Deferred:
        done: defer.Deferred = defer.Deferred()
        now = self.reactor.seconds()
        thread = min(range(len(self._free_at)), key=self._free_at.__getitem__)
        finish = max(now, self._free_at[thread]) + self.rng.expovariate(1 / self.mean)
        self._free_at[thread] = finish

        def work() -> None:
            try:
                result = fn(*args)
            except BaseException:  # noqa: BLE001 - delivered as a Failure, as the threads do
                done.errback(Failure())
            else:
                done.callback(result)

        self.reactor.callLater(finish - now, work)
        return done
