"""The asynchronous face of a storage engine: updates applied on the event loop, group flush.

An update is a pure function of the key's current record. ``Store.update`` applies it at once on
the event loop: it reads the stored record, computes the new one and commits it in its own
transaction without waiting for the disk (``StorageEngine.apply``), so the next update and every
read see it. A single flusher thread then makes the applied transactions durable, one ``flush``
(one fsync) for every update applied while the previous flush ran: the fsync rate bounds flushes,
not updates (MEASUREMENTS.md: 7.3k commits/s one fsync each vs 80k/s in groups of 100).

An update's Deferred fires with the function's result once a flush that started after it has
returned, so an acknowledgement always follows durability. Reads may see versions whose flush is
still running (not yet acknowledged to their writer); a failed flush fails its updates' Deferreds,
and those versions, never acknowledged, may still become durable with a later flush.

Actors for new versions are allocated here (``node~incarnation.epoch``). A dot is used before the
version that carries it is durable (a coordinator sends the version to the other replicas while
its own flush runs), so a crash can roll a record's counter back below a dot already out in the
cluster. Two rules keep dots unique all the same: epochs are reserved durably in blocks before
they are handed out (a restarted node skips the rest of its block), and a record's actor is reused
only within the run that allocated it; after a restart the next version coordinated on the record
takes a fresh actor (Riak's fix for kv679 is the same idea: a new epoch after a crash).

A flush that fails leaves the log with a hole that a later successful fsync would paper over (the
kernel may drop the pages that failed), so the first failure is permanent: every update from
then on fails, and the node must be restarted (recovery replays what is durable).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet import defer
from twisted.logger import Logger

from dynamod.core.encoding import encode_record
from dynamod.core.versions import Record
from dynamod.storage.engine import StorageEngine, UpdateFn

Runner = Callable[..., defer.Deferred]

#: Upper bound on keys per batch of reads handed to a reader thread.
READ_BATCH = 256
#: Actor epochs reserved per synchronous commit (a restart skips what is left of its block; the
#: counter has 64 bits).
EPOCH_BLOCK = 100_000


class StorageBroken(RuntimeError):
    """A flush failed earlier: the store takes no more updates."""


def run_synchronously(fn: Callable[..., Any], *args: Any) -> defer.Deferred:
    """A runner that calls ``fn`` on the spot (tests, the in-memory engine)."""
    return defer.maybeDeferred(fn, *args)


class Store:
    """Deferred-returning reads and durably acknowledged updates over a ``StorageEngine``."""

    log = Logger()

    def __init__(self, engine: StorageEngine, node_id: str = "node", *, reader: Runner = run_synchronously,
                 flusher: Runner = run_synchronously, housekeeper: Runner = run_synchronously,
                 read_batches: int = 2, on_batch: Callable[[int, float], None] | None = None):
        self.engine = engine
        self.node_id = node_id
        self._reader = reader
        self._flusher = flusher
        self._housekeeper = housekeeper
        self._on_batch = on_batch
        self._epoch = engine.epoch
        # Every actor this run allocates has an epoch above this; older ones may have been rolled back.
        self._run_floor = engine.epoch
        self._actor_prefix = f"{node_id}~{engine.incarnation}."
        #: The flush failure that stopped all updates, if any.
        self.broken: Any = None
        # updates applied but not yet covered by a flush: (result, waiter)
        self._unflushed: list[tuple[Any, defer.Deferred]] = []
        self._in_flight: defer.Deferred | None = None
        self._read_queue: list[tuple[bytes, defer.Deferred]] = []
        self._reads_in_flight = 0
        self._max_read_batches = read_batches
        self.batches = 0
        self.updates = 0
        #: key -> owners it is held for as a fallback (kept current by ``stage``, built by ``scan``).
        self.hinted: dict[bytes, frozenset[str]] = {}
        #: Called as ``observer(key, old_record, new_record)`` for every applied change.
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
        """A fresh actor id for this node: never returned before, across restarts. Every
        ``EPOCH_BLOCK``-th call waits for one synchronous commit (the next reservation)."""
        self._epoch += 1
        if self._epoch > self.engine.epoch:
            self.engine.reserve_epochs(self._epoch + EPOCH_BLOCK - 1)
        return f"{self._actor_prefix}{self._epoch}"

    def _allocated_this_run(self, actor: str) -> bool:
        prefix, _, epoch = actor.rpartition(".")
        return prefix + "." == self._actor_prefix and epoch.isdigit() and int(epoch) > self._run_floor

    # -- reads ---------------------------------------------------------------------------------

    def get(self, key: bytes) -> defer.Deferred:
        """Fires with the newest ``Record`` or None; fails with ``CorruptRecord``."""
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
        if self._reader is run_synchronously:
            return self.engine.read_raw(key)
        return self._reader(self.engine.read_raw, key)

    def _flush_reads(self) -> None:
        while self._reads_in_flight < self._max_read_batches and self._read_queue:
            batch = self._read_queue[:READ_BATCH]
            del self._read_queue[:READ_BATCH]
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
        """Apply ``fn`` to the key's newest record now; fires with fn's result once the new
        record is durable. Fails at once (and changes nothing) when fn raises, the stored
        record is corrupt or the engine refuses the transaction."""
        try:
            _, durable = self.stage(key, fn)
        except Exception:  # noqa: BLE001 - reported to this update's caller
            return defer.fail()
        return durable

    def stage(self, key: bytes, fn: UpdateFn) -> tuple[Any, defer.Deferred]:
        """Apply ``fn`` to the key's newest record now and commit the new record (not yet
        durable). Returns fn's result at once, and a Deferred that fires with it once the record
        is durable. Raises (and changes nothing) when fn raises, the stored record is corrupt or
        the engine refuses the transaction."""
        if self.broken is not None:
            raise StorageBroken(f"storage stopped after a failed flush: {self.broken.getErrorMessage()}")
        current = stored = self.engine.read(key)
        if stored is not None and stored.actor is not None and not self._allocated_this_run(stored.actor):
            current = attrs.evolve(stored, actor=None, counter=0)
        new, result = fn(current, self.allocate_actor)
        self.engine.apply([(key, None if new is None else encode_record(new))])
        for observer in self._observers:
            try:
                observer(key, stored, new)
            except Exception:  # noqa: BLE001 - the change is committed: the other observers still hear of it
                self.log.failure("storage observer failed on {key!r}", key=key)
        durable: defer.Deferred = defer.Deferred()
        self._unflushed.append((result, durable))
        self._flush()
        return result, durable

    def _flush(self) -> None:
        if self._in_flight is not None or not self._unflushed:
            return
        batch, self._unflushed = self._unflushed, []
        self.batches += 1
        self.updates += len(batch)
        started = time.perf_counter()
        running = self._flusher(self.engine.flush)
        self._in_flight = running

        def flushed(_: Any) -> None:
            if self._on_batch is not None:
                self._on_batch(len(batch), time.perf_counter() - started)
            for result, waiter in batch:
                waiter.callback(result)

        def failed(failure: Any) -> None:
            self.log.failure("storage flush of {count} updates failed; every update fails from now on, "
                             "restart the node", failure, count=len(batch))
            self.broken = failure
            for _, waiter in batch + self._unflushed:
                waiter.errback(failure)
            self._unflushed = []

        def next_batch(_: Any) -> None:
            self._in_flight = None
            self._flush()

        running.addCallbacks(flushed, failed)
        running.addBoth(next_batch)

    # -- lifecycle -----------------------------------------------------------------------------

    def maintain(self) -> defer.Deferred:
        """Run the engine's housekeeping on its own thread: a checkpoint flushes many dirty pages
        and, on the flusher thread, stalled every acknowledgement behind it (p99.9 of 200-400 ms)."""
        return self._housekeeper(self.engine.maintain)

    def drain(self) -> defer.Deferred:
        """Fires once every applied update is durable (used on shutdown)."""
        if self._in_flight is None and not self._unflushed:
            return defer.succeed(None)
        waiters = [waiter for _, waiter in self._unflushed]
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
