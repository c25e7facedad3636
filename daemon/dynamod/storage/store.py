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

Damage. A record that does not decode (``CorruptRecord``) is reported to readers, logged once per
key and counted; an update treats it as "this node holds nothing usable for the key": a replica's
version or a client's write replaces it (a client write gets a fresh actor, as on a new record),
and background work that finds it holds nothing to send. An engine that fails as a whole
(``EnvironmentFailed``: a page checksum, a panic) stops the store for good: the damage is marked
on disk for the next open, and ``on_fatal`` is told (the node exits; a restarted node moves the
environment aside and salvages it).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from dynamod.core.encoding import encode_record
from dynamod.core.versions import Record
from dynamod.storage.engine import CorruptRecord, EnvironmentFailed, StorageEngine, UpdateFn, decode_stored

Runner = Callable[..., defer.Deferred]

#: Upper bound on keys per batch of reads handed to a reader thread.
READ_BATCH = 256
#: Actor epochs reserved per synchronous commit (a restart skips what is left of its block; the
#: counter has 64 bits).
EPOCH_BLOCK = 100_000
#: Corrupt keys remembered (each logged once); past this the log may repeat itself.
MAX_CORRUPT_KEYS = 100_000


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
                 read_batches: int = 2, on_batch: Callable[[int, float], None] | None = None,
                 on_corrupt: Callable[[bytes], None] = lambda key: None,
                 on_fatal: Callable[[str], None] = lambda reason: None,
                 clock: Callable[[], float] = time.perf_counter):
        self.engine = engine
        self._clock = clock  # times the flush batches (the node's reactor clock)
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
        #: Keys whose stored record was found not to decode (until a write replaces it).
        self.corrupt_keys: set[bytes] = set()
        #: Called once per key found corrupt (the node counts it); ``on_fatal`` once when the
        #: engine fails as a whole.
        self.on_corrupt = on_corrupt
        self.on_fatal = on_fatal

    def observe(self, observer: Callable[[bytes, Record | None, Record | None], None]) -> None:
        """Have ``observer`` told of every change (and of every stored record by ``scan``)."""
        self._observers.append(observer)

    def scan(self) -> int:
        """Tell every observer about every stored record, once, at start; returns the count.
        Records that do not decode are noted (``corrupt_keys``), not indexed: this node holds
        nothing usable for them, so transfers and handoff have nothing to move."""
        count = 0
        try:
            for key, raw in self.engine.items():
                try:
                    record = decode_stored(key, raw)
                except CorruptRecord as exc:
                    self.note_corrupt(key, exc.reason)
                    continue
                count += 1
                for observer in self._observers:
                    observer(key, None, record)
        except EnvironmentFailed:
            self._fail_environment(Failure())
            raise
        return count

    def note_corrupt(self, key: bytes, reason: str) -> None:
        """Record that ``key``'s stored record does not decode: logged and counted once per key."""
        if key in self.corrupt_keys:
            return
        if len(self.corrupt_keys) < MAX_CORRUPT_KEYS:
            self.corrupt_keys.add(key)
        self.log.warn("stored record of {key!r} does not decode ({reason}); this node holds nothing "
                      "usable for it until a replica's version or a write replaces it", key=key, reason=reason)
        self.on_corrupt(key)

    def _fail_environment(self, failure: Failure) -> None:
        """The engine failed as a whole: stop every update, mark the damage for the next open,
        tell ``on_fatal`` (once)."""
        if self.broken is not None and self.broken.check(EnvironmentFailed):
            return
        self.broken = failure
        reason = failure.getErrorMessage()
        try:
            self.engine.mark_damaged(reason)
        except OSError as exc:
            self.log.error("could not mark the storage damaged: {error}", error=str(exc))
        self.log.critical("storage failed, nothing it holds can be trusted: {reason}", reason=reason)
        self.on_fatal(reason)

    def _checked(self, failure: Failure, key: bytes | None = None) -> Failure:
        """Note corrupt records and engine failures on their way to a caller."""
        if failure.check(EnvironmentFailed):
            self._fail_environment(failure)
        elif key is not None and failure.check(CorruptRecord):
            self.note_corrupt(key, failure.value.reason)
        return failure

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
                return defer.fail(self._checked(Failure(), key))
        done: defer.Deferred = defer.Deferred()
        self._read_queue.append((key, done))
        self._flush_reads()
        return done

    def get_raw(self, key: bytes) -> bytes | None | defer.Deferred:
        """The newest encoded record of ``key`` (or None), undecoded: a replica answering a peer's
        read passes it on and the coordinator decodes (and validates) it once. Returned at once
        when reads run inline, else a Deferred."""
        if self._reader is run_synchronously:
            try:
                return self.engine.read_raw(key)
            except EnvironmentFailed:
                self._fail_environment(Failure())
                raise
        return self._reader(self.engine.read_raw, key).addErrback(self._checked)

    def _flush_reads(self) -> None:
        while self._reads_in_flight < self._max_read_batches and self._read_queue:
            batch = self._read_queue[:READ_BATCH]
            del self._read_queue[:READ_BATCH]
            self._reads_in_flight += 1
            running = self._reader(self.engine.read_many, [key for key, _ in batch])

            def deliver(results: list[Any], batch: list = batch) -> None:
                self._reads_in_flight -= 1
                for (key, waiter), result in zip(batch, results, strict=True):
                    if isinstance(result, Exception):
                        waiter.errback(self._checked(Failure(result), key))
                    else:
                        waiter.callback(result)
                self._flush_reads()

            def fail_all(failure: Any, batch: list = batch) -> None:
                self._reads_in_flight -= 1
                self._checked(failure)
                self.log.failure("storage read batch of {count} keys failed", failure, count=len(batch))
                for _, waiter in batch:
                    waiter.errback(failure)
                self._flush_reads()

            running.addCallbacks(deliver, fail_all)

    # -- updates -------------------------------------------------------------------------------

    def update(self, key: bytes, fn: UpdateFn) -> defer.Deferred:
        """Apply ``fn`` to the key's newest record now; fires with fn's result once the new
        record is durable. Fails at once (and changes nothing) when fn raises or the engine
        refuses the transaction."""
        try:
            _, durable = self.stage(key, fn)
        except Exception:  # noqa: BLE001 - reported to this update's caller
            return defer.fail()
        return durable

    def stage(self, key: bytes, fn: UpdateFn) -> tuple[Any, defer.Deferred]:
        """Apply ``fn`` to the key's newest record now and commit the new record (not yet
        durable). Returns fn's result at once, and a Deferred that fires with it once the record
        is durable. A stored record that does not decode is handed to fn as None (nothing usable
        is held). Raises (and changes nothing) when fn raises or the engine refuses the
        transaction."""
        if self.broken is not None:
            raise StorageBroken(f"storage stopped after a failure: {self.broken.getErrorMessage()}")
        try:
            current = stored = self.engine.read(key)
        except CorruptRecord as exc:
            self.note_corrupt(key, exc.reason)
            current = stored = None
        except EnvironmentFailed:
            self._fail_environment(Failure())
            raise
        if stored is not None and stored.actor is not None and not self._allocated_this_run(stored.actor):
            current = attrs.evolve(stored, actor=None, counter=0)
        new, result = fn(current, self.allocate_actor)
        try:
            self.engine.apply([(key, None if new is None else encode_record(new))])
        except EnvironmentFailed:
            self._fail_environment(Failure())
            raise
        self.corrupt_keys.discard(key)
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
        started = self._clock()
        running = self._flusher(self.engine.flush)
        self._in_flight = running

        def flushed(_: Any) -> None:
            if self._on_batch is not None:
                self._on_batch(len(batch), self._clock() - started)
            for result, waiter in batch:
                waiter.callback(result)

        def failed(failure: Any) -> None:
            if failure.check(EnvironmentFailed):
                self._fail_environment(failure)
            else:
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
        return self._housekeeper(self.engine.maintain).addErrback(self._checked)

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
