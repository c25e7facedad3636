"""Hinted handoff (Dynamo §4.6): give fallback copies back to their owners once they are up.

Every ``interval`` seconds the service walks the keys this node holds for other owners and hands
each to its owner when the failure detector says the owner is up, a bounded number per round and
each paced by admission control, so background work cannot crowd out client requests. The
delivery and the removal of the copy are the coordinator's (``Coordinator.hand_off``): a hint is
dropped only after the owner acknowledged.

A hint whose owner is no longer a replica of the key (it was removed or replaced, or the ring
changed) is not delivered to it: the hint of a replaced node is renamed to its replacement (which
took exactly its partitions), any other such hint is dropped from the record, which stays as a
plain copy, kept here when this node replicates the key and else moved to the key's current
replicas by the transfer service. Never is a copy dropped before someone acknowledged it. A node
that owns no partition (leaving, or removed and back) cannot wait for a down owner: it passes the
copy on to the next node up on the ring as that owner's fallback, and drops it once acknowledged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
from msgpack import packb
from twisted.application.internet import TimerService
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from dynamod.coordinator import Coordinator
from dynamod.core.encoding import siblings_to_wire
from dynamod.core.versions import Record, after_handoff
from dynamod.net.peers import call_peer


def _without_hint(owner: str) -> Callable[..., tuple[Record | None, bool]]:
    def drop(record: Record | None, _: Any) -> tuple[Record | None, bool]:
        if record is None or owner not in record.hints:
            return record, False
        return attrs.evolve(record, hints=record.hints - {owner}), True
    return drop


def _renamed_hint(owner: str, new: str) -> Callable[..., tuple[Record | None, bool]]:
    def rename(record: Record | None, _: Any) -> tuple[Record | None, bool]:
        if record is None or owner not in record.hints:
            return record, False
        return attrs.evolve(record, hints=(record.hints - {owner}) | {new}), True
    return rename


class HandoffService(TimerService):
    """Delivers hinted records to their owners on a schedule."""

    log = Logger()

    def __init__(self, coordinator: Coordinator, is_up: Callable[[str], bool], clock: IReactorTime,
                 interval: float, max_per_round: int = 100, admit: Callable[[int], bool] = lambda cost: True):
        super().__init__(interval, self.round)
        self.clock = clock
        self.coordinator = coordinator
        self.is_up = is_up
        self.max_per_round = max_per_round
        self.admit = admit
        self._in_flight: set[tuple[bytes, str]] = set()
        self.delivered = 0
        #: The node that replaced a departed owner, if any (the gossip service's view).
        self.replacement: Callable[[str], str | None] = lambda owner: None
        self.stats = {"renamed": 0, "released": 0, "passed_on": 0}
        coordinator.operations.register("hints_for", self.hints_for)

    def hints_for(self, owner: str) -> int:
        """The ``hints_for`` peer operation: keys held here for ``owner`` (a plan's warnings)."""
        return sum(1 for owners in self.coordinator.store.hinted.values() if owner in owners)

    def pending(self) -> int:
        """Keys still held for another owner."""
        return len(self.coordinator.store.hinted)

    def round(self) -> None:
        """Start up to ``max_per_round`` deliveries to owners that are up."""
        started = 0
        for key, owners in list(self.coordinator.store.hinted.items()):
            for owner in owners:
                if started >= self.max_per_round:
                    return
                replicas = self.coordinator.replicas(key)
                if owner not in self.coordinator.peers or owner not in replicas:
                    new = self.replacement(owner)
                    if new is not None and new in replicas:
                        self.stats["renamed"] += 1
                        self.coordinator.store.update(key, _renamed_hint(owner, new))
                    else:
                        # The owner left or no longer replicates the key: the copy stays as a plain
                        # record, which the transfer service moves to the key's current owners if
                        # this node is not one.
                        self.stats["released"] += 1
                        self.coordinator.store.update(key, _without_hint(owner))
                    continue
                if (key, owner) in self._in_flight:
                    continue
                if not self.is_up(owner):
                    fallback = self._fallback(key, owner)
                    if fallback is None or not self.admit(1):
                        continue
                    started += 1
                    self._in_flight.add((key, owner))
                    self.pass_on(key, owner, fallback).addCallbacks(
                        self._done, self._failed, callbackArgs=(key, owner), errbackArgs=(key, owner))
                    continue
                if not self.admit(1):
                    return
                started += 1
                self._in_flight.add((key, owner))
                delivery = self.coordinator.hand_off(key, owner)
                delivery.addCallbacks(self._done, self._failed, callbackArgs=(key, owner),
                                      errbackArgs=(key, owner))

    def _fallback(self, key: bytes, owner: str) -> str | None:
        """On a node that owns no partition, the next node up that stands in for ``owner``."""
        me, ring = self.coordinator.node_id, self.coordinator.ring
        if me in ring.ownership:
            return None
        targets = ring.sloppy_targets(key, self.coordinator.settings.n, lambda node: node != me and self.is_up(node))
        return next((node for node, hint in targets if hint == owner), None)

    @defer.inlineCallbacks
    def pass_on(self, key: bytes, owner: str, fallback: str) -> Any:
        """Give ``fallback`` the copy held for ``owner`` (with the hint), then drop it here once
        acknowledged (unless a newer version arrived meanwhile). Fires with True when it is gone."""
        store = self.coordinator.store
        record = yield store.get(key)
        if record is None or owner not in record.hints:
            return True
        delivered = record.siblings
        packed = packb(siblings_to_wire(delivered), use_bin_type=True)
        yield call_peer(self.coordinator.peers, fallback, "put", [key, packed, owner],
                        self.coordinator.settings.timeout)
        self.stats["passed_on"] += 1

        def forget(current: Record | None, _: Any) -> tuple[Record | None, bool]:
            keep = self.coordinator.node_id in self.coordinator.replicas(key)
            after = after_handoff(current, owner, delivered, keep_copy=keep)
            return after, after is None or owner not in after.hints

        gone = yield store.update(key, forget)
        return gone

    def _done(self, forgotten: bool, key: bytes, owner: str) -> None:
        self._in_flight.discard((key, owner))
        if forgotten:
            self.delivered += 1

    def _failed(self, failure: Any, key: bytes, owner: str) -> None:
        self._in_flight.discard((key, owner))
        self.log.info("handoff of {key!r} to {owner} failed, will retry: {reason}", key=key, owner=owner,
                      reason=failure.getErrorMessage())
