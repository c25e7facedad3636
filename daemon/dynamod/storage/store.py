"""The asynchronous face of a storage engine, with group commit and grouped reads.

Updates queue up and a single writer drains the queue in batches, one transaction (and one fsync)
per batch: while a commit is in flight the next batch gathers, so the fsync rate bounds batches,
not writes (MEASUREMENTS.md: 7.3k commits/s vs 80k puts/s in groups of 100). Reads are grouped the
same way, a few batches in flight at once, because handing one read to a thread costs more than the
read itself. Runners are injected: real thread pools in the daemon, a synchronous runner in tests.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from dynamod.storage.engine import StorageEngine, UpdateFn

Runner = Callable[..., defer.Deferred]

#: Upper bound on updates per transaction (keeps one commit's latency bounded).
MAX_BATCH = 256


def run_synchronously(fn: Callable[..., Any], *args: Any) -> defer.Deferred:
    """A runner that calls ``fn`` on the spot (tests, the in-memory engine)."""
    return defer.maybeDeferred(fn, *args)


class Store:
    """Deferred-returning reads and group-committed updates over a ``StorageEngine``."""

    log = Logger()

    def __init__(self, engine: StorageEngine, *, reader: Runner = run_synchronously,
                 writer: Runner = run_synchronously, housekeeper: Runner = run_synchronously,
                 max_batch: int = MAX_BATCH, read_batches: int = 2):
        self.engine = engine
        self._reader = reader
        self._writer = writer
        self._housekeeper = housekeeper
        self._max_batch = max_batch
        self._pending: list[tuple[bytes, UpdateFn, defer.Deferred]] = []
        self._in_flight: defer.Deferred | None = None
        self._read_queue: list[tuple[bytes, defer.Deferred]] = []
        self._reads_in_flight = 0
        self._max_read_batches = read_batches
        self.batches = 0
        self.updates = 0

    @property
    def incarnation(self) -> str:
        """The engine's node incarnation."""
        return self.engine.incarnation

    def get(self, key: bytes) -> defer.Deferred:
        """Fires with the stored ``Record`` or None; fails with ``CorruptRecord``."""
        if self._reader is run_synchronously:
            try:
                return defer.succeed(self.engine.read(key))
            except Exception:  # noqa: BLE001 - CorruptRecord and engine errors go to the caller
                return defer.fail()
        done: defer.Deferred = defer.Deferred()
        self._read_queue.append((key, done))
        self._flush_reads()
        return done

    def get_raw(self, key: bytes) -> bytes | None | defer.Deferred:
        """The stored bytes of ``key`` (or None), undecoded: a replica answering a peer's read
        passes them on and the coordinator decodes (and validates) them once. Read at once when
        reads run inline, else a Deferred."""
        if self._reader is run_synchronously:
            return self.engine.read_raw(key)
        return self._reader(self.engine.read_raw, key)

    def _flush_reads(self) -> None:
        while self._reads_in_flight < self._max_read_batches and self._read_queue:
            batch = self._read_queue[:self._max_batch]
            del self._read_queue[:self._max_batch]
            self._reads_in_flight += 1
            running = self._reader(self.engine.read_many, [key for key, _ in batch])

            def deliver(results: list[Any], batch: list = batch) -> None:
                self._reads_in_flight -= 1
                for (_, waiter), result in zip(batch, results, strict=True):
                    if isinstance(result, Exception):
                        waiter.errback(result)
                    else:
                        waiter.callback(result)
                self._flush_reads()

            def fail_all(failure: Any, batch: list = batch) -> None:
                self._reads_in_flight -= 1
                self.log.failure("storage read batch of {count} keys failed", failure, count=len(batch))
                for _, waiter in batch:
                    waiter.errback(failure)
                self._flush_reads()

            running.addCallbacks(deliver, fail_all)

    def update(self, key: bytes, fn: UpdateFn) -> defer.Deferred:
        """Apply ``fn`` to the key's record in the next group commit; fires with fn's result
        once the transaction holding it has committed."""
        done: defer.Deferred = defer.Deferred()
        self._pending.append((key, fn, done))
        self._flush()
        return done

    def _flush(self) -> None:
        if self._in_flight is not None or not self._pending:
            return
        batch, self._pending = self._pending[:self._max_batch], self._pending[self._max_batch:]
        self.batches += 1
        self.updates += len(batch)
        running = self._writer(self.engine.apply_batch, [(key, fn) for key, fn, _ in batch])
        self._in_flight = running

        def deliver(results: list[Any]) -> None:
            for (_, _, waiter), result in zip(batch, results, strict=True):
                if isinstance(result, Exception):
                    waiter.errback(result)
                else:
                    waiter.callback(result)

        def fail_all(failure: Any) -> None:
            self.log.failure("storage batch of {count} updates failed", failure, count=len(batch))
            for _, _, waiter in batch:
                waiter.errback(failure)

        def next_batch(_: Any) -> None:
            self._in_flight = None
            self._flush()

        running.addCallbacks(deliver, fail_all)
        running.addBoth(next_batch)

    def maintain(self) -> defer.Deferred:
        """Run the engine's housekeeping on its own thread: a checkpoint flushes many dirty pages
        and, on the writer thread, stalled every write behind it (p99.9 of 200-400 ms)."""
        return self._housekeeper(self.engine.maintain)

    def drain(self) -> defer.Deferred:
        """Fires once every queued update has committed (used on shutdown)."""
        if self._in_flight is None and not self._pending:
            return defer.succeed(None)
        waiters = [waiter for _, _, waiter in self._pending]
        if self._in_flight is not None:
            waiters.append(self._in_flight)
        return defer.DeferredList([_observe(w) for w in waiters]).addCallback(lambda _: self.drain())

    def close(self) -> None:
        """Close the engine (call after ``drain``)."""
        self.engine.close()


def _observe(waiter: defer.Deferred) -> defer.Deferred:
    """A Deferred that fires when ``waiter`` does, without consuming its result."""
    observer: defer.Deferred = defer.Deferred()

    def relay(result: Any) -> Any:
        observer.callback(None)
        return result

    waiter.addBoth(relay)
    return observer

