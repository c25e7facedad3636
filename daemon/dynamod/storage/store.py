"""The asynchronous face of a storage engine: updates computed on the event loop, group commit.

An update is a pure function of the key's current record. ``Store.update`` applies it at once on
the event loop, against the newest state: the record staged by an earlier update that has not
committed yet, else the stored one. It queues the encoded result, and a single writer thread
commits queued results in batches, one transaction (and one fsync) per batch: while a commit is in
flight the next batch gathers, so the fsync rate bounds batches, not writes (MEASUREMENTS.md: 7.3k
commits/s vs 80k puts/s in groups of 100). The writer thread only moves bytes into Berkeley DB:
with the Python work on it, it spent most of each batch waiting for the GIL (3 ms per batch of 6).

An update's Deferred fires with the function's result once its batch has committed, so an
acknowledgement always follows durability. Reads see staged records first, i.e. possibly versions
whose commit is still in flight (not yet acknowledged to their writer).

Actors for new versions are allocated here (``node~incarnation.epoch``): the epoch counter lives in
memory and the batch holding the first record that uses an epoch also records it in the engine, so
a restarted node never hands out an epoch twice.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from dynamod.core.encoding import encode_record
from dynamod.core.versions import Record
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

    def __init__(self, engine: StorageEngine, node_id: str = "node", *, reader: Runner = run_synchronously,
                 writer: Runner = run_synchronously, housekeeper: Runner = run_synchronously,
                 max_batch: int = MAX_BATCH, read_batches: int = 2,
                 on_batch: Callable[[int, float], None] | None = None):
        self.engine = engine
        self.node_id = node_id
        self._reader = reader
        self._writer = writer
        self._housekeeper = housekeeper
        self._max_batch = max_batch
        self._on_batch = on_batch
        # key -> (record, sequence number of the update that staged it), until that update commits
        self._staged: dict[bytes, tuple[Record | None, int]] = {}
        self._sequence = 0
        self._epoch = engine.epoch
        self._pending: list[tuple[bytes, bytes | None, int, Any, defer.Deferred]] = []
        self._in_flight: defer.Deferred | None = None
        self._read_queue: list[tuple[bytes, defer.Deferred]] = []
        self._reads_in_flight = 0
        self._max_read_batches = read_batches
        self.batches = 0
        self.updates = 0
        #: key -> owners it is held for as a fallback (kept current by ``stage``, built by ``scan``).
        self.hinted: dict[bytes, frozenset[str]] = {}
        #: Called as ``observer(key, old_record, new_record)`` for every staged change.
        self._observers: list[Callable[[bytes, Record | None, Record | None], None]] = [self._index_hints]

    def observe(self, observer: Callable[[bytes, Record | None, Record | None], None]) -> None:
        """Have ``observer`` told of every change (and of every stored record by ``scan``)."""
        self._observers.append(observer)

    def scan(self) -> int:
        """Tell every observer about every stored record, once, at start; returns the count.
        Corrupt records are skipped here and reported when read."""
        count = 0
        for key in list(self.engine.keys()):
            try:
                record = self.engine.read(key)
            except Exception:  # noqa: BLE001 - reported when the key is read
                continue
            count += 1
            for observer in self._observers:
                observer(key, None, record)
        return count

    def _index_hints(self, key: bytes, old: Record | None, new: Record | None) -> None:
        if new is not None and new.hints:
            self.hinted[key] = new.hints
        else:
            self.hinted.pop(key, None)

    def allocate_actor(self) -> str:
        """A fresh actor id for this node: never returned before, across restarts."""
        self._epoch += 1
        return f"{self.node_id}~{self.engine.incarnation}.{self._epoch}"

    # -- reads ---------------------------------------------------------------------------------

    def get(self, key: bytes) -> defer.Deferred:
        """Fires with the newest ``Record`` or None; fails with ``CorruptRecord``."""
        if key in self._staged:
            return defer.succeed(self._staged[key][0])
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
        """The newest encoded record of ``key`` (or None), undecoded: a replica answering a peer's
        read passes it on and the coordinator decodes (and validates) it once. Returned at once
        when reads run inline, else a Deferred."""
        if key in self._staged:
            record = self._staged[key][0]
            return None if record is None else encode_record(record)
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

    # -- updates -------------------------------------------------------------------------------

    def update(self, key: bytes, fn: UpdateFn) -> defer.Deferred:
        """Apply ``fn`` to the key's newest record now; fires with fn's result once the
        transaction holding the new record has committed. Fails at once (and stages nothing)
        when fn raises or the stored record is corrupt."""
        try:
            _, committed = self.stage(key, fn)
        except Exception:  # noqa: BLE001 - reported to this update's caller
            return defer.fail()
        return committed

    def stage(self, key: bytes, fn: UpdateFn) -> tuple[Any, defer.Deferred]:
        """Apply ``fn`` to the key's newest record now and queue the new record for commit.
        Returns fn's result at once, and a Deferred that fires with it after the commit. Raises
        (and stages nothing) when fn raises or the stored record is corrupt."""
        current = self._staged[key][0] if key in self._staged else self.engine.read(key)
        new, result = fn(current, self.allocate_actor)
        raw = None if new is None else encode_record(new)
        for observer in self._observers:
            observer(key, current, new)
        self._sequence += 1
        self._staged[key] = (new, self._sequence)
        committed: defer.Deferred = defer.Deferred()
        self._pending.append((key, raw, self._sequence, result, committed))
        self._flush()
        return result, committed

    def _flush(self) -> None:
        if self._in_flight is not None or not self._pending:
            return
        batch, self._pending = self._pending[:self._max_batch], self._pending[self._max_batch:]
        self.batches += 1
        self.updates += len(batch)
        started = time.perf_counter()
        epoch = self._epoch if self._epoch > self.engine.epoch else None
        running = self._writer(self.engine.write_batch, [(key, raw) for key, raw, _, _, _ in batch], epoch)
        self._in_flight = running

        def committed(_: Any) -> None:
            if self._on_batch is not None:
                self._on_batch(len(batch), time.perf_counter() - started)
            self._unstage(batch)
            for _, _, _, result, waiter in batch:
                waiter.callback(result)

        def failed(failure: Any) -> None:
            self.log.failure("storage batch of {count} updates failed", failure, count=len(batch))
            # Later updates of these keys stay staged: built on unacknowledged versions, they may
            # still commit, which is allowed for a write that was never acknowledged.
            self._unstage(batch)
            for _, _, _, _, waiter in batch:
                waiter.errback(failure)

        def next_batch(_: Any) -> None:
            self._in_flight = None
            self._flush()

        running.addCallbacks(committed, failed)
        running.addBoth(next_batch)

    def _unstage(self, batch: list[tuple[bytes, bytes | None, int, Any, defer.Deferred]]) -> None:
        """Forget staged records that this batch wrote, unless a later update replaced them."""
        for key, _, sequence, _, _ in batch:
            staged = self._staged.get(key)
            if staged is not None and staged[1] == sequence:
                del self._staged[key]

    # -- lifecycle -----------------------------------------------------------------------------

    def maintain(self) -> defer.Deferred:
        """Run the engine's housekeeping on its own thread: a checkpoint flushes many dirty pages
        and, on the writer thread, stalled every write behind it (p99.9 of 200-400 ms)."""
        return self._housekeeper(self.engine.maintain)

    def drain(self) -> defer.Deferred:
        """Fires once every queued update has committed (used on shutdown)."""
        if self._in_flight is None and not self._pending:
            return defer.succeed(None)
        waiters = [waiter for _, _, _, _, waiter in self._pending]
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
