"""The Twisted shells around the detector and handoff, on a fake clock."""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.task import Clock

from dynamod.core.detector import FailureDetector
from dynamod.core.versions import CausalContext, live_values
from dynamod.handoff import HandoffService
from dynamod.health import HealthService
from dynamod.net.protocol import PeerUnavailable
from tests.sim import fired, make_cluster


class FakePeer:
    """Answers pings while ``alive``; refuses otherwise."""

    def __init__(self):
        self.alive = True
        self.pings = 0

    def call(self, op, payload, timeout):
        self.pings += 1
        return defer.succeed(True) if self.alive else defer.fail(PeerUnavailable("refused"))


def test_heartbeats_mark_a_dead_peer_down_and_a_returning_one_up():
    clock, peer = Clock(), FakePeer()
    health = HealthService(FailureDetector(failures_to_suspect=2), {"n2": peer}, clock, interval=1.0)
    assert not health.is_up("n2")  # never heard from
    health.startService()
    assert health.is_up("n2") and peer.pings == 1
    for _ in range(5):
        clock.advance(1.0)
    assert health.is_up("n2") and health.heard_ago("n2") == 0.0
    peer.alive = False
    clock.advance(1.0)
    assert health.is_up("n2")  # one refusal is not enough
    clock.advance(1.0)
    assert not health.is_up("n2")
    peer.alive = True
    clock.advance(1.0)
    assert health.is_up("n2")
    health.stopService()


def test_a_silent_peer_is_marked_down_by_phi():
    clock = Clock()

    class Silent(FakePeer):
        def call(self, op, payload, timeout):
            self.pings += 1
            return defer.Deferred() if self.pings > 5 else defer.succeed(True)  # then never answers

    health = HealthService(FailureDetector(), {"n2": Silent()}, clock, interval=1.0)
    health.startService()
    for _ in range(4):
        clock.advance(1.0)
    assert health.is_up("n2")
    for _ in range(10):
        clock.advance(1.0)
    assert not health.is_up("n2")
    health.stopService()


def test_handoff_rounds_deliver_hinted_keys_once_the_owner_is_up():
    network, clock = make_cluster(size=5)
    key = b"sloppy"
    owners = network.nodes["n1"].replicas(key)
    network.down.add(owners[2])
    fired(network.nodes[owners[0]].put(key, b"v", CausalContext(), 2))
    [fallback] = [n for n, h in network.nodes[owners[0]].targets(key).items() if h is not None]
    service = HandoffService(network.nodes[fallback], lambda node: node not in network.down, clock, 1.0)
    service.round()
    assert service.pending() == 1  # the owner is still down: nothing tried
    network.down.clear()
    service.round()
    assert service.pending() == 0 and service.delivered == 1
    assert live_values(network.nodes[owners[2]].store.engine.read(key).siblings) == [b"v"]
