"""Heartbeats and the local view of which peers are up (the shell around ``core.detector``).

Every ``interval`` seconds the node pings each peer over its peer connection; each answer is an
arrival for the phi-accrual detector and each refused or timed-out ping a failure, so a killed
peer is marked down within a couple of intervals and a silent (paused, partitioned) one once its
silence is improbable given its history. Any answer marks it up again. Faster evidence comes from
the connections themselves and from the peers: a connection lost or refused marks its peer down at
once, and a node that stops cleanly says ``goodbye`` to every peer before it closes its listeners,
so they route around it before its first request could fail (issue 13: a W=3 PUT sent right after
an owner's SIGTERM used to be refused). The decisions stay in ``FailureDetector``.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from typing import Any

from twisted.application.internet import TimerService
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from dynamod.core.detector import FailureDetector
from dynamod.net.operations import Code, Conflict, PeerError, PeerTimeout, PeerUnavailable
from dynamod.net.peers import PeerClient

#: At most this long is spent telling the peers goodbye on shutdown (peers that are unreachable
#: or slow are not waited for: the lost connection tells them a moment later).
GOODBYE_TIMEOUT = 0.5


class HealthService(TimerService):
    """Pings peers on a schedule, listens to their connections, and answers ``is_up``."""

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
        # Peer clients whose connection events this service already hears (one per member; a
        # member whose address changes gets a new client).
        self._watched: weakref.WeakSet[PeerClient] = weakref.WeakSet()

    def beat(self) -> None:
        """Re-judge every peer, then ping each once."""
        for peer_id in self.peers:
            self._note(peer_id)
        for peer_id in list(self.peers):
            self.ping(peer_id)

    def ping(self, peer_id: str) -> None:
        """Ping one peer now (a new member is judged at once, not at the next beat: until it has
        answered it counts as down, and a node that just joined would route around everyone)."""
        client = self.peers[peer_id]
        self.watch(peer_id, client)
        ping = client.call("ping", None, timeout=2 * self.interval)
        ping.addCallbacks(lambda _: self.arrival(peer_id), lambda failure: self._failed(peer_id, failure))

    def watch(self, peer_id: str, client: Any) -> None:
        """Hear of ``client``'s connections opening and closing (a ``PeerClient``; other clients,
        such as the in-memory ones of tests, have no connection to watch)."""
        if not isinstance(client, PeerClient) or client in self._watched:
            return
        self._watched.add(client)
        client.observe(lambda: self._opened(peer_id, client), lambda reason: self._lost(peer_id, client, reason))

    def _current(self, peer_id: str, client: PeerClient) -> bool:
        return self.peers.get(peer_id) is client

    def _opened(self, peer_id: str, client: PeerClient) -> None:
        """A connection to the peer was made: ping it now rather than at the next beat, so a peer
        that restarted is up again within a round trip."""
        if not self._current(peer_id, client):
            return
        self.detector.connected(peer_id)
        if self.running:
            self.ping(peer_id)

    def _lost(self, peer_id: str, client: PeerClient, reason: str) -> None:
        """The connection closed or was refused: down until it answers again."""
        if not self._current(peer_id, client):
            return
        self.detector.connection_lost(peer_id, self.clock.seconds())
        self._note(peer_id, because=reason)

    def arrival(self, peer_id: str) -> None:
        """The peer answered something."""
        self.detector.arrival(peer_id, self.clock.seconds())
        self._note(peer_id)

    def _failed(self, peer_id: str, failure: Any) -> None:
        if failure.check(PeerUnavailable, PeerTimeout):
            self.detector.failure(peer_id, self.clock.seconds())
            self._note(peer_id)
        elif failure.check(PeerError) and failure.value.code == Code.NODE_STOPPING:
            self._departed(peer_id)  # stopping, and its goodbye has not reached us (or was lost)
        else:
            self.log.warn("ping of {peer} failed: {reason}", peer=peer_id, reason=failure.getErrorMessage())

    def _departed(self, peer_id: str) -> None:
        self.detector.goodbye(peer_id, self.clock.seconds())
        self._note(peer_id, because="it is stopping")

    def handle_goodbye(self, arguments: list) -> bool:
        """The ``goodbye`` peer operation: ``[peer_id]`` is stopping; it is down from now on, until
        it answers over a connection opened after this."""
        (peer_id,) = arguments
        if peer_id not in self.peers:
            raise Conflict(f"goodbye from {peer_id!r}, which is not a peer of this node")
        self._departed(peer_id)
        return True

    def goodbye(self, node_id: str, timeout: float = GOODBYE_TIMEOUT) -> defer.Deferred:
        """Tell every peer that ``node_id`` (this node) is stopping. Fires with the peers that
        acknowledged, once all have answered or failed, or after ``timeout`` seconds at most;
        never fails (an unreachable peer learns it from the lost connection)."""
        finished: defer.Deferred = defer.Deferred()
        peers = list(self.peers)
        told: list[str] = []

        def finish(_: Any = None) -> None:
            if not finished.called:
                if timer.active():
                    timer.cancel()
                finished.callback(list(told))

        timer = self.clock.callLater(timeout, finish)
        calls = []
        for peer_id in peers:
            call = self.peers[peer_id].call("goodbye", [node_id], timeout)
            call.addCallbacks(lambda _, peer_id=peer_id: told.append(peer_id), lambda _: None)
            calls.append(call)
        defer.DeferredList(calls).addCallback(finish)
        return finished

    def _note(self, peer_id: str, because: str | None = None) -> None:
        up = self._up[peer_id] = self.detector.is_up(peer_id, self.clock.seconds())
        if self._last_state.get(peer_id, True) != up:
            if because is None:
                self.log.info("peer {peer} is {state}", peer=peer_id, state="up" if up else "down")
            else:
                self.log.info("peer {peer} is {state}: {reason}", peer=peer_id, state="up" if up else "down",
                              reason=because)
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
