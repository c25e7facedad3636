"""Faster evidence than phi (issue 13): lost or refused connections, and the goodbye of a node that
stops cleanly, in the pure detector and in the health service on a fake clock and fake reactor."""

from __future__ import annotations

import pytest
from twisted.internet import defer
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from dynamod.core.detector import FailureDetector
from dynamod.health import GOODBYE_TIMEOUT, HealthService
from dynamod.net.operations import Code, Conflict
from dynamod.net.peers import PeerClient
from dynamod.net.protocol import RESPONSE, PeerError, decode_frame, encode_frame
from tests.unit.test_services import FakePeer


def heard_every_second(detector: FailureDetector, peer: str, until: float) -> None:
    for t in range(int(until) + 1):
        detector.arrival(peer, float(t))


# -- the pure detector ---------------------------------------------------------------------------

def test_a_lost_connection_marks_a_peer_down_at_once_and_its_next_answer_up():
    detector = FailureDetector(failures_to_suspect=2)
    heard_every_second(detector, "n4", 10.0)
    detector.connection_lost("n4", 10.1)
    assert not detector.is_up("n4", 10.1)  # not after two failures, not once phi has climbed
    assert detector.phi("n4", 10.1) < 1.0
    detector.arrival("n4", 10.4)
    assert detector.is_up("n4", 10.5)


def test_after_a_goodbye_only_an_answer_over_a_new_connection_brings_the_peer_back():
    detector = FailureDetector()
    heard_every_second(detector, "n4", 10.0)
    detector.goodbye("n4", 10.2)
    assert not detector.is_up("n4", 10.2)
    detector.arrival("n4", 10.3)  # a ping the stopping process answered before it said goodbye
    assert not detector.is_up("n4", 10.3)
    detector.connected("n4")  # it restarted and accepted a connection
    assert not detector.is_up("n4", 12.0)
    detector.arrival("n4", 12.1)
    assert detector.is_up("n4", 12.1)


def test_a_connection_before_the_goodbye_does_not_count_as_the_new_one():
    detector = FailureDetector()
    heard_every_second(detector, "n4", 5.0)
    detector.connected("n4")
    detector.goodbye("n4", 5.5)
    detector.arrival("n4", 5.6)
    assert not detector.is_up("n4", 5.6)


# -- the health service --------------------------------------------------------------------------

def running_health(peers: dict, clock: Clock) -> HealthService:
    health = HealthService(FailureDetector(failures_to_suspect=2), peers, clock, interval=1.0)
    health.startService()
    for _ in range(3):
        clock.advance(1.0)
    return health


def test_a_goodbye_marks_the_peer_down_before_any_ping_fails():
    clock, peer = Clock(), FakePeer()
    health = running_health({"n4": peer}, clock)
    assert health.is_up("n4")
    assert health.handle_goodbye(["n4"]) is True
    assert not health.is_up("n4")
    clock.advance(1.0)  # the stopping node still answers pings sent on the old connection
    assert not health.is_up("n4")
    health.stopService()


def test_a_goodbye_from_a_stranger_is_refused():
    clock = Clock()
    health = running_health({"n4": FakePeer()}, clock)
    with pytest.raises(Conflict, match="n9"):
        health.handle_goodbye(["n9"])
    assert health.is_up("n4")
    health.stopService()


def test_a_ping_refused_because_the_peer_is_stopping_counts_as_its_goodbye():
    clock = Clock()

    class Stopping(FakePeer):
        stopping = False

        def call(self, op, payload, timeout):
            if self.stopping:
                return defer.fail(PeerError(Code.NODE_STOPPING, "node is stopping"))
            return super().call(op, payload, timeout)

    peer = Stopping()
    health = running_health({"n4": peer}, clock)
    peer.stopping = True
    clock.advance(1.0)
    assert not health.is_up("n4")  # one refusal, where two failures would be needed
    health.stopService()


def test_saying_goodbye_tells_every_peer_and_is_bounded_by_its_timeout():
    clock = Clock()

    class Recording(FakePeer):
        def __init__(self, answer):
            super().__init__()
            self.answer, self.told = answer, []

        def call(self, op, payload, timeout):
            if op != "goodbye":
                return super().call(op, payload, timeout)
            self.told.append(payload)
            return self.answer()

    quick = Recording(lambda: defer.succeed(True))
    refusing = Recording(lambda: defer.fail(PeerError(Code.CONFLICT, "refused")))
    silent = Recording(defer.Deferred)  # never answers
    health = HealthService(FailureDetector(), {"n2": quick, "n3": refusing, "n5": silent}, clock, interval=1.0)
    done = health.goodbye("n1")
    assert [quick.told, refusing.told, silent.told] == [[["n1"]]] * 3
    assert not done.called
    clock.advance(GOODBYE_TIMEOUT)
    told: list = []
    done.addCallback(told.append)
    assert told == [["n2"]]


def test_saying_goodbye_does_not_wait_when_every_peer_answered():
    clock = Clock()
    health = HealthService(FailureDetector(), {"n2": FakePeer(), "n3": FakePeer()}, clock, interval=1.0)
    told: list = []
    health.goodbye("n1").addCallback(told.append)
    assert told == [["n2", "n3"]]
    assert not clock.getDelayedCalls()


# -- connection events of a real PeerClient on a fake reactor ----------------------------------

class Link:
    """A ``PeerClient`` whose connection attempts land on a ``MemoryReactorClock``."""

    def __init__(self):
        self.reactor = MemoryReactorClock()
        self.client = PeerClient("n4", "127.0.0.1:7004", self.reactor)
        self.transport: StringTransport | None = None
        self.protocol = None

    def next_attempt(self):
        """Advance the clock until the reconnecting client makes its next attempt (its backoff
        has a random jitter of up to a second)."""
        attempts = len(self.reactor.tcpClients)
        for _ in range(100):
            if len(self.reactor.tcpClients) > attempts:
                return
            self.reactor.advance(0.05)
        raise AssertionError("the client never tried again")

    def connect(self):
        """Complete the latest connection attempt."""
        factory = self.reactor.tcpClients[-1][2]
        self.protocol = factory.buildProtocol(None)
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)

    def answer_pings(self):
        """Answer every request written so far with True."""
        data = self.transport.value()
        self.transport.clear()
        while data:
            length = int.from_bytes(data[:4], "big")
            request = decode_frame(data[4:4 + length])
            data = data[4 + length:]
            frame = encode_frame([RESPONSE, request[1], True])
            self.protocol.dataReceived(len(frame).to_bytes(4, "big") + frame)

    def refuse(self):
        """Fail the latest connection attempt."""
        factory = self.reactor.tcpClients[-1][2]
        connector = self.reactor.connectors[-1]
        factory.clientConnectionFailed(connector, Failure(ConnectionRefusedError()))


def test_a_lost_connection_marks_the_peer_down_at_once_and_a_new_one_brings_it_back_within_a_round_trip():
    link = Link()
    health = HealthService(FailureDetector(failures_to_suspect=2), {"n4": link.client}, link.reactor,
                           interval=1.0)
    health.startService()  # pings n4, which starts connecting only when the client starts
    link.client.start()
    link.connect()
    link.answer_pings()
    assert health.is_up("n4")
    link.protocol.connectionLost(Failure(ConnectionDone()))
    assert not health.is_up("n4")  # no ping has failed yet, and phi is low
    link.next_attempt()
    link.refuse()
    assert not health.is_up("n4")
    link.next_attempt()
    link.connect()  # back: pinged at once, not at the next beat
    link.answer_pings()
    assert health.is_up("n4")
    health.stopService()
    link.client.stop()


def test_a_connection_this_node_aborted_for_silence_is_not_reported_lost_but_one_the_peer_closed_is():
    link = Link()
    lost: list[str] = []
    link.client.observe(lambda: None, lost.append)
    link.client.start()
    link.connect()
    link.client.call("ping", None, timeout=1.0).addErrback(lambda failure: None)
    link.reactor.advance(1.1)  # unanswered for a whole timeout: aborted as silent
    assert link.transport.disconnecting
    link.protocol.connectionLost(Failure(ConnectionDone()))
    # The silence is the failure detector's to weigh (the timed-out ping): this node may have stalled.
    assert lost == []
    link.next_attempt()
    link.connect()
    link.protocol.connectionLost(Failure(ConnectionDone()))  # the peer closed this one
    assert len(lost) == 1 and lost[0].startswith("connection lost")
    link.client.stop()


def test_a_goodbye_outlives_answers_until_the_peer_is_reached_over_a_new_connection():
    link = Link()
    health = HealthService(FailureDetector(), {"n4": link.client}, link.reactor, interval=1.0)
    health.startService()
    link.client.start()
    link.connect()
    link.answer_pings()
    health.handle_goodbye(["n4"])
    link.reactor.advance(1.0)
    link.answer_pings()  # answered by the stopping process on the old connection
    assert not health.is_up("n4")
    link.protocol.connectionLost(Failure(ConnectionDone()))
    link.next_attempt()
    link.connect()
    link.answer_pings()
    assert health.is_up("n4")
    health.stopService()
    link.client.stop()
