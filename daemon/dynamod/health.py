"""Heartbeats and the local view of which peers are up (the shell around ``core.detector``).

Every ``interval`` seconds the node pings each peer over its peer connection; each answer is an
arrival for the phi-accrual detector and each refused or timed-out ping a failure, so a killed
peer is marked down within a couple of intervals and a silent (paused, partitioned) one once its
silence is improbable given its history. Any answer marks it up again. Gossip will carry these
arrivals once membership is gossiped; the decisions stay in ``FailureDetector``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from twisted.application.internet import TimerService
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from dynamod.core.detector import FailureDetector
from dynamod.net.peers import PeerClient
from dynamod.net.protocol import PeerTimeout, PeerUnavailable


class HealthService(TimerService):
    """Pings peers on a schedule and answers ``is_up``."""

    log = Logger()

    def __init__(self, detector: FailureDetector, peers: Mapping[str, PeerClient], clock: IReactorTime,
                 interval: float):
        super().__init__(interval, self.beat)
        self.clock = clock
        self.detector = detector
        self.peers = peers
        self.interval = interval
        self._last_state: dict[str, bool] = {}
        # The judgement is asked several times per request: it is recomputed on every piece of
        # evidence and at every beat (so silence is noticed within one interval), and read here.
        self._up: dict[str, bool] = {}

    def beat(self) -> None:
        """Re-judge every peer, then ping each once."""
        for peer_id in self.peers:
            self._note(peer_id)
        for peer_id in list(self.peers):
            self.ping(peer_id)

    def ping(self, peer_id: str) -> None:
        """Ping one peer now (a new member is judged at once, not at the next beat: until it has
        answered it counts as down, and a node that just joined would route around everyone)."""
        ping = self.peers[peer_id].call("ping", None, timeout=2 * self.interval)
        ping.addCallbacks(lambda _: self.arrival(peer_id), lambda failure: self._failed(peer_id, failure))

    def arrival(self, peer_id: str) -> None:
        """The peer answered something."""
        self.detector.arrival(peer_id, self.clock.seconds())
        self._note(peer_id)

    def _failed(self, peer_id: str, failure: Any) -> None:
        if failure.check(PeerUnavailable, PeerTimeout):
            self.detector.failure(peer_id, self.clock.seconds())
            self._note(peer_id)
        else:
            self.log.warn("ping of {peer} failed: {reason}", peer=peer_id, reason=failure.getErrorMessage())

    def _note(self, peer_id: str) -> None:
        up = self._up[peer_id] = self.detector.is_up(peer_id, self.clock.seconds())
        if self._last_state.get(peer_id, True) != up:
            self.log.info("peer {peer} is {state}", peer=peer_id, state="up" if up else "down")
        self._last_state[peer_id] = up

    def forget(self, peer_id: str) -> None:
        """A member that left: no judgement is kept about it."""
        self._up.pop(peer_id, None)
        self._last_state.pop(peer_id, None)
        self.detector.peers.pop(peer_id, None)

    def heard_ago(self, peer_id: str) -> float | None:
        """Seconds since the peer last answered (None: never)."""
        health = self.detector.peers.get(peer_id)
        if health is None or health.accrual.last_arrival is None:
            return None
        return max(0.0, self.clock.seconds() - health.accrual.last_arrival)

    def is_up(self, peer_id: str) -> bool:
        """This node's judgement of ``peer_id`` as of the latest evidence or beat."""
        return self._up.get(peer_id, False)
