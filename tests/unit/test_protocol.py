"""Peer protocol: framing, request ids, timeouts on a fake clock, and hostile input."""

from __future__ import annotations

import struct

import msgpack
import pytest
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.test import iosim

from dynamod.net.protocol import (
    DEFAULT_MAX_FRAME,
    SILENT,
    PeerError,
    PeerProtocol,
    PeerTimeout,
    PeerUnavailable,
    encode_frame,
)


def echo_handler(op, payload):
    if op == "echo":
        return payload
    if op == "later":
        return defer.succeed(payload * 2)
    raise ValueError(f"unknown op {op}")


def connected_pair(clock=None):
    clock = clock or Clock()
    server = PeerProtocol(echo_handler, clock)
    client = PeerProtocol(None, clock)
    _, _, pump = iosim.connectedServerAndClient(lambda: server, lambda: client)
    return client, server, pump, clock


def result_of(d):
    results = []
    d.addBoth(results.append)
    assert results, "deferred has not fired"
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]


def test_request_and_response_match_by_id():
    client, _, pump, _ = connected_pair()
    first = client.call("echo", [1, b"x"], timeout=5)
    second = client.call("later", 21, timeout=5)
    pump.flush()
    assert result_of(first) == [1, b"x"]
    assert result_of(second) == 42


def test_a_one_mebibyte_value_fits_in_a_frame():
    client, _, pump, _ = connected_pair()
    value = b"v" * (1024 * 1024)
    answer = client.call("echo", value, timeout=5)
    pump.flush()
    assert result_of(answer) == value


def test_handler_errors_come_back_as_peer_errors():
    client, _, pump, _ = connected_pair()
    answer = client.call("nope", None, timeout=5)
    pump.flush()
    with pytest.raises(PeerError, match="unknown op"):
        result_of(answer)


def test_an_unanswered_request_times_out_on_the_clock():
    clock = Clock()
    protocol = PeerProtocol(None, clock)
    protocol.makeConnection(StringTransport())
    answer = protocol.call("echo", 1, timeout=2.0)
    clock.advance(1.9)
    assert not answer.called
    clock.advance(0.2)
    with pytest.raises(PeerTimeout):
        result_of(answer)
    # a late answer is ignored rather than crashing
    protocol.dataReceived(_frame(encode_frame([1, 1, "late"])))


def test_a_connection_silent_for_a_whole_request_timeout_is_aborted_and_a_busy_one_is_kept():
    clock = Clock()
    protocol = PeerProtocol(None, clock)
    transport = StringTransport()
    protocol.makeConnection(transport)
    first = protocol.call("echo", 1, timeout=1.0)
    clock.advance(0.5)
    protocol.dataReceived(_frame(encode_frame([1, 1, "answered"])))  # the peer talks
    second = protocol.call("echo", 2, timeout=1.0)  # sent at 0.5 s
    clock.advance(0.4)
    protocol.dataReceived(_frame(encode_frame([2, 99, "ping"])))  # something arrives at 0.9 s...
    clock.advance(0.7)  # ...so the timeout of the second (at 1.5 s) keeps the connection
    assert result_of(first) == "answered"
    with pytest.raises(PeerTimeout):
        result_of(second)
    assert not transport.disconnecting
    third = protocol.call("echo", 3, timeout=1.0)  # sent at 1.6 s; nothing arrives any more
    clock.advance(1.1)
    with pytest.raises(PeerTimeout):
        result_of(third)
    assert transport.disconnecting  # aborted: the reconnecting client opens a fresh one


class StalledClock(Clock):
    """A clock whose zero-delay calls wait for ``run_next_pass``: what a reactor does, which runs
    them only after its next I/O pass (``Clock.advance`` would run them at once)."""

    def __init__(self) -> None:
        super().__init__()
        self.next_pass: list = []

    def callLater(self, delay, f, *args, **kwargs):  # noqa: N802 - the IReactorTime name
        if delay == 0:
            self.next_pass.append((f, args, kwargs))
            return None
        return super().callLater(delay, f, *args, **kwargs)

    def run_next_pass(self) -> None:
        calls, self.next_pass = self.next_pass, []
        for f, args, kwargs in calls:
            f(*args, **kwargs)


def test_answers_waiting_in_the_socket_after_a_stall_of_this_node_are_read_before_deadlines_expire():
    clock = StalledClock()
    protocol = PeerProtocol(None, clock)
    transport = StringTransport()
    protocol.makeConnection(transport)
    answer = protocol.call("echo", 1, timeout=1.0)
    clock.advance(3.0)  # this node's event loop stalled: the deadline's timer runs first...
    assert not answer.called
    protocol.dataReceived(_frame(encode_frame([1, 1, "answered"])))  # ...then the I/O pass reads the answer
    clock.run_next_pass()
    assert result_of(answer) == "answered"
    assert not transport.disconnecting  # the peer was never silent: the connection is kept
    late = protocol.call("echo", 2, timeout=1.0)
    clock.advance(1.5)
    clock.run_next_pass()  # nothing arrived in the pass after the deadline: it expires, and the
    with pytest.raises(PeerTimeout):  # connection, silent for a whole timeout, is aborted
        result_of(late)
    assert transport.disconnecting and protocol.lost_reason == SILENT


def _frame(body: bytes) -> bytes:
    return struct.pack("!I", len(body)) + body


@pytest.mark.parametrize("body", [b"\xc1\xc1\xc1", msgpack.packb({"not": "a list"}), msgpack.packb([7, 1, 2]),
                                  msgpack.packb([0, "id", "op", None])])
def test_a_garbage_frame_closes_only_that_connection(body):
    protocol = PeerProtocol(echo_handler, Clock())
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(_frame(body))
    assert transport.disconnecting


def test_an_oversized_frame_closes_the_connection():
    protocol = PeerProtocol(echo_handler, Clock(), max_frame=1024)
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(struct.pack("!I", 4096) + b"x" * 10)
    assert transport.disconnecting
    assert DEFAULT_MAX_FRAME > 2 * 1024 * 1024


def test_disconnect_mid_message_fails_pending_calls():
    protocol = PeerProtocol(echo_handler, Clock())
    protocol.makeConnection(StringTransport())
    answer = protocol.call("echo", 1, timeout=5)
    protocol.dataReceived(struct.pack("!I", 100) + b"partial")
    protocol.connectionLost(Failure(ConnectionError("peer went away")))
    with pytest.raises(PeerUnavailable):
        result_of(answer)


def test_the_coalescer_sends_a_turns_writes_to_a_connection_together():
    from dynamod.net.writes import Coalescer

    clock = Clock()
    coalescer = Coalescer(clock)
    first, second = StringTransport(), StringTransport()
    coalescer.write(first, b"a")
    coalescer.write(second, b"x")
    coalescer.write(first, b"b")
    assert first.value() == b"" and second.value() == b""
    clock.advance(0)
    assert first.value() == b"ab" and second.value() == b"x"
    coalescer.write(first, b"c")
    clock.advance(0)
    assert first.value() == b"abc"
