"""Ownership transfer (Dynamo §4.9): records this node holds for partitions it no longer replicates
go to the partition's current owners, and the copy here is dropped once all of them acknowledged.

After a join, the nodes that dropped out of a partition's preference list send its keys to the new
owners; after a leave, the leaving node sends everything it holds. Until every owner acknowledged,
the copy stays here, so a record is never held by fewer nodes than before the change; a write that
lands here meanwhile keeps the copy for another round (``versions.after_transfer``). The work is
found through the anti-entropy service's per-partition key index, moved in batches of
``batch`` keys per request, and paced by the node's admission control.

A batch carries the sender's ring version, and a node that knows a newer ring refuses it: two
nodes on different rings could otherwise each take the other for the owner, swap the same
records, and both drop their copy.

What counts as work still to do (``pending``, gossiped; a change completes once every member
that is up reports none): misplaced keys whose new owners are all up, and hinted keys whose owner
is up (handoff under way) or has left (they turn into misplaced or own copies). Keys waiting on a
down owner are not counted: they stay here, are never dropped unacknowledged, and move when the
owner is back or removed; so one dead node cannot hold every membership change open. A node that
owns no partition (leaving, or removed and back) counts everything it holds, and, where an owner
of a partition is down, sends that owner's copy to the next node up on the ring as a hinted
fallback copy, so a leave does not wait for a dead node.

A record here that does not decode is something this node cannot hand over: it is never sent,
and it is dropped (unless a valid version replaced it meanwhile), so it holds back neither its
batch nor a leave. The key's owners keep what they hold; what only that record held is lost.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from msgpack import packb
from twisted.application.internet import TimerService
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from dynamod.antientropy import AntiEntropyService
from dynamod.coordinator import Coordinator
from dynamod.core.encoding import siblings_to_wire
from dynamod.core.versions import Record, after_transfer
from dynamod.net.operations import Conflict
from dynamod.net.peers import call_peer
from dynamod.storage.engine import CorruptRecord

#: Stands in for the record of a key whose stored bytes do not decode.
_UNUSABLE = object()


def _unusable(failure: Any) -> Any:
    failure.trap(CorruptRecord)  # the store noted (logged, counted) it
    return _UNUSABLE


def _drop_unusable(record: Record | None, _: Any) -> tuple[Record | None, bool]:
    """The store hands a record that does not decode to an update as None: drop it, unless a valid
    version has replaced it since."""
    return record, record is None


class TransferService(TimerService):
    """Moves misplaced records to their owners on a schedule."""

    log = Logger()

    def __init__(self, coordinator: Coordinator, index: AntiEntropyService, is_up: Callable[[str], bool],
                 clock: IReactorTime, interval: float, admit: Callable[[int], bool] = lambda cost: True,
                 batch: int = 64, parallel: int = 2, ring_version: Callable[[], int] = lambda: 0):
        super().__init__(interval, self.round)
        self.clock = clock
        self.coordinator = coordinator
        self.index = index
        self.is_up = is_up
        self.admit = admit
        self.batch = batch
        self.parallel = parallel
        self.ring_version = ring_version
        self._in_flight: set[int] = set()
        self.stats = {"keys_sent": 0, "keys_dropped": 0, "keys_unusable": 0, "failed_batches": 0}
        self.waiting: dict[int, str] = {}
        coordinator.operations.register("put_many", self.receive)

    def misplaced(self) -> dict[int, list[bytes]]:
        """Partitions with keys here that this node does not replicate, with those keys (records
        held as a fallback are the handoff service's)."""
        ring, n, me = self.coordinator.ring, self.coordinator.settings.n, self.coordinator.node_id
        hinted = self.coordinator.store.hinted
        found = {}
        for partition, keys in self.index.partition_keys.items():
            if keys and me not in ring.preference_list_for_partition(partition, n):
                movable = sorted(key for key in keys if key not in hinted)
                if movable:
                    found[partition] = movable
        return found

    def pending(self, misplaced: dict[int, list[bytes]] | None = None) -> int:
        """Keys held here for other nodes that a membership change waits for: misplaced records
        whose owners are all up and fallback copies whose owner is up or gone (everything, on a
        node that owns no partition)."""
        misplaced = self.misplaced() if misplaced is None else misplaced
        ring, n = self.coordinator.ring, self.coordinator.settings.n
        outside = self.coordinator.node_id not in ring.ownership
        count = sum(len(keys) for partition, keys in misplaced.items()
                    if outside or all(self.is_up(o) for o in ring.preference_list_for_partition(partition, n)))
        peers = self.coordinator.peers
        count += sum(1 for owners in self.coordinator.store.hinted.values()
                     if outside or any(owner not in peers or self.is_up(owner) for owner in owners))
        return count

    def held(self) -> int:
        """Every key held here for other nodes, waiting on a down owner or not."""
        return sum(len(keys) for keys in self.misplaced().values()) + len(self.coordinator.store.hinted)

    def targets(self, partition: int) -> dict[str, str | None] | None:
        """Where a misplaced partition goes: its owners when all are up; on a node that owns no
        partition, the owners that are up plus, for each one that is down, the next node up on the
        ring carrying that owner as its hint; None while that cannot be done."""
        ring, n, me = self.coordinator.ring, self.coordinator.settings.n, self.coordinator.node_id
        owners = ring.preference_list_for_partition(partition, n)
        if all(self.is_up(owner) for owner in owners):
            return dict.fromkeys(owners)
        if me in ring.ownership:
            return None
        targets = ring.sloppy_targets_for_partition(partition, n, lambda node: node != me and self.is_up(node))
        return dict(targets) if len(targets) == len(owners) else None

    def round(self) -> None:
        """Start batches of misplaced partitions, up to ``parallel`` at a time."""
        if not self.running:
            return
        for partition, keys in sorted(self.misplaced().items()):
            if len(self._in_flight) >= self.parallel:
                return
            if partition in self._in_flight:
                continue
            owners = self.coordinator.ring.preference_list_for_partition(partition, self.coordinator.settings.n)
            targets = self.targets(partition)
            if targets is None:
                down = [owner for owner in owners if not self.is_up(owner)]
                self.waiting[partition] = f"owner {down[0]} is down"
                continue
            chunk = keys[:self.batch]
            if not self.admit(len(chunk)):
                self.waiting[partition] = "paced by admission control"
                return
            self.waiting.pop(partition, None)
            self._in_flight.add(partition)
            move = self.move(partition, chunk, targets)
            move.addCallbacks(self._next, self._failed, callbackArgs=(partition,), errbackArgs=(partition,))

    def _failed(self, failure: Any, partition: int) -> None:
        """Give up on the partition until the next round (no immediate retry)."""
        self._in_flight.discard(partition)
        self.stats["failed_batches"] += 1
        self.waiting[partition] = failure.getErrorMessage()
        self.log.info("transfer of partition {partition} failed, will retry: {reason}", partition=partition,
                      reason=failure.getErrorMessage())

    def _next(self, _: Any, partition: int) -> None:
        """A batch is done: go on at once while there is work (the admission control paces it)."""
        self._in_flight.discard(partition)
        self.round()

    @defer.inlineCallbacks
    def move(self, partition: int, keys: list[bytes], owners: tuple[str, ...] | Mapping[str, str | None]) -> Any:
        """Send one batch of a partition's records to all its owners (or to the targets given,
        each with the hint it holds them for), then drop what they hold."""
        targets = owners if isinstance(owners, Mapping) else dict.fromkeys(owners)
        store, coordinator = self.coordinator.store, self.coordinator
        records = yield defer.gatherResults([store.get(key).addErrback(_unusable) for key in keys])
        delivered: dict[bytes, Any] = {}
        entries = []
        unusable = []
        for key, record in zip(keys, records, strict=True):
            if record is _UNUSABLE:
                unusable.append(store.update(key, _drop_unusable))
            elif record is not None and record.siblings and not record.hints:
                delivered[key] = record.siblings
                entries.append([key, packb(siblings_to_wire(record.siblings), use_bin_type=True)])
        if unusable:
            dropped = yield defer.gatherResults(unusable)
            self.stats["keys_unusable"] += sum(dropped)
        if not entries:
            return
        timeout = 2 * coordinator.settings.timeout
        version = self.ring_version()
        # The hint rides as a third element only when there is one (older nodes take two).
        yield defer.gatherResults([
            call_peer(coordinator.peers, target, "put_many",
                      [version, entries] if hint is None else [version, entries, hint], timeout)
            for target, hint in targets.items()], consumeErrors=True)
        self.stats["keys_sent"] += len(entries)
        dropped = yield defer.gatherResults([store.update(key, self._drop(key, siblings))
                                             for key, siblings in delivered.items()])
        self.stats["keys_dropped"] += sum(dropped)

    def receive(self, arguments: list) -> defer.Deferred:
        """The ``put_many`` peer operation: merge a batch of another node's records here (held for
        the owner named by an optional third element)."""
        sender_ring, entries, *rest = arguments
        hint = rest[0] if rest else None
        if sender_ring < self.ring_version():
            raise Conflict(f"stale transfer: sent on ring version {sender_ring}, this node has "
                           f"{self.ring_version()}")
        merge = self.coordinator.merge_update
        updates = [self.coordinator.store.update(key, merge(siblings, hint)) for key, siblings in entries]
        return defer.gatherResults(updates).addCallback(len)

    def _drop(self, key: bytes, delivered: Any) -> Callable[..., tuple[Record | None, bool]]:
        def drop(record: Record | None, _: Any) -> tuple[Record | None, bool]:
            if self.coordinator.node_id in self.coordinator.replicas(key):
                return record, False  # the ring changed back: this node owns the key again
            after = after_transfer(record, delivered)
            return after, after is None
        return drop

    def report(self) -> dict[str, Any]:
        """Outbound transfers for /admin/status and /admin/transfers."""
        ring, n = self.coordinator.ring, self.coordinator.settings.n
        misplaced = self.misplaced()
        return {
            "pending_keys": self.pending(misplaced),
            "held_keys": sum(len(keys) for keys in misplaced.values()) + len(self.coordinator.store.hinted),
            "hinted_keys": len(self.coordinator.store.hinted),
            "partitions": [{"partition": p, "keys": len(keys), "to": list(ring.preference_list_for_partition(p, n)),
                            "state": "sending" if p in self._in_flight else self.waiting.get(p, "queued")}
                           for p, keys in sorted(misplaced.items())],
            **self.stats,
        }
