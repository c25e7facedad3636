"""Tombstone removal: a delete is a versioned write (a tombstone sibling), and the tombstone may go
only once it can no longer be undone by a replica that missed it.

A key whose siblings are all tombstones is a candidate. Its first owner (the others leave it to
that one) checks, while the cluster is settled (no join or leave moving data, no hinted copies
waiting), that every owner holds exactly the same tombstones and every other member nothing else
of the key (a former owner may hold a superseded version it could not hand off yet); from then on
a grace period runs, and
after it a second check must find the same again. Only then is each owner told to drop the record
if it still holds exactly those tombstones (``reap``). A write that arrives meanwhile changes the
digest, so the reap leaves that replica alone and the key is reconsidered later. The grace period
covers copies that might still be on their way (a read repair or anti-entropy push in flight).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.application.internet import TimerService
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from dynamod.coordinator import Coordinator
from dynamod.core.merkle import record_digest
from dynamod.core.versions import Record
from dynamod.net.peers import call_peer
from dynamod.storage.engine import CorruptRecord, decode_stored


def tombstones_only(record: Record | None) -> bool:
    """True when every sibling of the record is a delete (and it is not a fallback copy)."""
    return record is not None and bool(record.siblings) and not record.hints \
        and all(s.deleted for s in record.siblings)


def tombstones_only_or_fallback(record: Record) -> bool:
    """True when every sibling of the record is a delete (held as a fallback copy or not)."""
    return bool(record.siblings) and all(s.deleted for s in record.siblings)


class TombstoneReaper(TimerService):
    """Finds tombstones every owner holds and removes them after the grace period."""

    log = Logger()

    def __init__(self, coordinator: Coordinator, clock: IReactorTime, interval: float, grace: float,
                 settled: Callable[[], bool], admit: Callable[[int], bool] = lambda cost: True,
                 batch: int = 100):
        super().__init__(interval, self.round)
        self.clock = clock
        self.coordinator = coordinator
        self.grace = grace
        self.settled = settled
        self.admit = admit
        self.batch = batch
        #: keys whose record holds only tombstones here
        self.candidates: set[bytes] = set()
        #: key -> (digest every owner held, when that was first seen)
        self.confirmed: dict[bytes, tuple[bytes, float]] = {}
        self._running: defer.Deferred | None = None
        self._cursor = 0
        self.stats = {"reaped": 0, "checks": 0}
        coordinator.store.observe(self.observe)
        coordinator.operations.register("reap", self._answer_reap)

    def observe(self, key: bytes, old: Record | None, new: Record | None) -> None:
        if tombstones_only(new):
            self.candidates.add(key)
        else:
            self.candidates.discard(key)
            self.confirmed.pop(key, None)

    def _mine(self) -> list[bytes]:
        """Candidates this node is the first owner of."""
        me, coordinator = self.coordinator.node_id, self.coordinator
        return [key for key in self.candidates if coordinator.replicas(key)[0] == me]

    def round(self) -> None:
        if self._running is not None or not self.candidates or not self.settled():
            return
        mine = sorted(self._mine())
        if not mine:
            return
        # Keys whose grace has passed first; the others in turn, so keys that cannot be reaped
        # yet do not hold back the rest.
        now = self.clock.seconds()
        due = [key for key in mine if key in self.confirmed and now - self.confirmed[key][1] >= self.grace]
        due_set = set(due)
        others = [key for key in mine if key not in due_set]
        start = self._cursor % len(others) if others else 0
        keys = (due + others[start:] + others[:start])[:self.batch]
        if not self.admit(len(keys)):
            return
        self._cursor = start + max(0, len(keys) - len(due))
        self._running = defer.gatherResults([self.consider(key) for key in keys], consumeErrors=True)
        self._running.addErrback(lambda failure: self.log.info("tombstone check failed: {reason}",
                                                               reason=failure.getErrorMessage()))
        self._running.addBoth(self._finished)

    def _finished(self, _: Any) -> None:
        self._running = None

    @defer.inlineCallbacks
    def consider(self, key: bytes) -> Any:
        """Check one candidate; reap it when its grace period has passed."""
        self.stats["checks"] += 1
        digest = yield self._common_digest(key)
        if digest is None:
            self.confirmed.pop(key, None)
            return
        now = self.clock.seconds()
        seen = self.confirmed.get(key)
        if seen is None or seen[0] != digest:
            self.confirmed[key] = (digest, now)
            return
        if now - seen[1] < self.grace:
            return
        owners = self.coordinator.replicas(key)
        timeout = self.coordinator.settings.timeout
        yield defer.gatherResults([call_peer(self.coordinator.peers, owner, "reap", [key, digest], timeout)
                                   for owner in owners if owner != self.coordinator.node_id], consumeErrors=True)
        reaped = yield self._reap(key, digest)
        self.confirmed.pop(key, None)
        if reaped:
            self.stats["reaped"] += 1

    @defer.inlineCallbacks
    def _common_digest(self, key: bytes) -> Any:
        """The digest of the tombstones every owner holds, or None when they differ (or one is
        unreachable, or holds more than tombstones)."""
        coordinator = self.coordinator
        timeout = coordinator.settings.timeout
        replies = []
        for owner in coordinator.replicas(key):
            # An owner whose record does not decode holds no tombstones that count: nothing is
            # reaped until read repair or anti-entropy has replaced that record.
            try:
                if owner == coordinator.node_id:
                    record = yield coordinator.store.get(key)
                else:
                    raw = yield call_peer(coordinator.peers, owner, "get", [key], timeout)
                    record = decode_stored(key, raw)
            except CorruptRecord as exc:
                if owner == coordinator.node_id:
                    self.candidates.discard(key)  # noted by the store; a valid version brings it back
                else:
                    coordinator.report_corrupt_replica(owner, key, exc.reason)
                return None
            if not tombstones_only(record):
                return None
            replies.append(record_digest(record.siblings))
        if len(set(replies)) != 1:
            return None
        # Every other member must hold nothing of the key but the same tombstones: a former owner
        # may still hold a version the tombstones superseded, for a transfer its new owner is not
        # reachable for (so it counts as no pending transfer); delivered after the reap, it would
        # come back as if never deleted (found by dynacheck sim, seed 128).
        owners = set(coordinator.replicas(key))
        for member in sorted(set(coordinator.peers) - owners):
            try:
                raw = yield call_peer(coordinator.peers, member, "get", [key], timeout)
                record = decode_stored(key, raw)
            except Exception:  # noqa: BLE001 - unreachable or unreadable: the key waits for another round
                return None
            if record is not None and (not tombstones_only_or_fallback(record)
                                       or record_digest(record.siblings) != replies[0]):
                return None
        return replies[0]

    def _reap(self, key: bytes, digest: bytes) -> defer.Deferred:
        def drop(record: Record | None, _: Any) -> tuple[Record | None, bool]:
            if tombstones_only(record) and record_digest(record.siblings) == digest:
                return None, True
            return record, False
        return self.coordinator.store.update(key, drop)

    def _answer_reap(self, arguments: list) -> defer.Deferred:
        key, digest = arguments
        return self._reap(key, digest)

    def report(self) -> dict[str, Any]:
        return {"tombstones": len(self.candidates), "awaiting_grace": len(self.confirmed), **self.stats}
