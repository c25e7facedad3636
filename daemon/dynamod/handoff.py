"""Hinted handoff (Dynamo §4.6): give fallback copies back to their owners once they are up.

Every ``interval`` seconds the service walks the keys this node holds for other owners and hands
each to its owner when the failure detector says the owner is up, a bounded number per round and
each paced by admission control, so background work cannot crowd out client requests. The
delivery and the removal of the copy are the coordinator's (``Coordinator.hand_off``): a hint is
dropped only after the owner acknowledged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
from twisted.application.internet import TimerService
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from dynamod.coordinator import Coordinator
from dynamod.core.versions import Record


def _without_hint(owner: str) -> Callable[..., tuple[Record | None, bool]]:
    def drop(record: Record | None, _: Any) -> tuple[Record | None, bool]:
        if record is None or owner not in record.hints:
            return record, False
        return attrs.evolve(record, hints=record.hints - {owner}), True
    return drop


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
                if owner not in self.coordinator.peers:
                    # The owner has left the cluster: the copy stays as a plain record, which the
                    # transfer service moves to the key's current owners if this node is not one.
                    self.coordinator.store.update(key, _without_hint(owner))
                    continue
                if (key, owner) in self._in_flight or not self.is_up(owner):
                    continue
                if not self.admit(1):
                    return
                started += 1
                self._in_flight.add((key, owner))
                delivery = self.coordinator.hand_off(key, owner)
                delivery.addCallbacks(self._done, self._failed, callbackArgs=(key, owner),
                                      errbackArgs=(key, owner))

    def _done(self, forgotten: bool, key: bytes, owner: str) -> None:
        self._in_flight.discard((key, owner))
        if forgotten:
            self.delivered += 1

    def _failed(self, failure: Any, key: bytes, owner: str) -> None:
        self._in_flight.discard((key, owner))
        self.log.info("handoff of {key!r} to {owner} failed, will retry: {reason}", key=key, owner=owner,
                      reason=failure.getErrorMessage())
