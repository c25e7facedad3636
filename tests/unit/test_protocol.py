"""Peer protocol: framing, request ids, timeouts on a fake clock, and hostile input."""

from __future__ import annotations

import struct

import msgpack
import pytest
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs
from twisted.python.failure import Failure
from twisted.test import iosim

from dynamod.net.operations import Code, Conflict
from dynamod.net.protocol import (
    DEFAULT_MAX_FRAME,
    SILENT,
    PeerError,
    PeerProtocol,
    PeerTimeout,
    PeerUnavailable,
    encode_frame,
)


def echo_handler(op, payload, caller=None):
    if op == "echo":
        return payload
    if op == "later":
        return defer.succeed(payload * 2)
    if op == "refuse":
        raise Conflict("not now")
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


def test_a_refusal_comes_back_with_its_code_and_anything_else_as_internal_without_its_text():
    client, _, pump, _ = connected_pair()
    refused = client.call("refuse", None, timeout=5)
    failed = client.call("nope", None, timeout=5)
    with capturedLogs() as logs:
        pump.flush()
    with pytest.raises(PeerError, match="not now") as error:
        result_of(refused)
    assert error.value.code == Code.CONFLICT
    with pytest.raises(PeerError) as error:
        result_of(failed)
    assert error.value.code == Code.INTERNAL and "nope" not in error.value.message
    assert [bool(event.get("log_failure")) for event in logs] == [True]  # the bug, once, with its traceback


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


# -- receiving frames --------------------------------------------------------------------------


class Receiving(PeerProtocol):
    """A connection that records the frames it receives instead of decoding them."""

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME):
        super().__init__(None, Clock(), max_frame)
        self.frames: list[bytes] = []
        self.makeConnection(StringTransport())

    def stringReceived(self, frame: bytes) -> None:  # noqa: N802 - the Twisted name
        self.frames.append(frame)


def test_a_32_mib_frame_in_64_kib_reads_is_joined_once_when_whole():
    body = bytes(range(256)) * (32 * 1024 * 4)  # 32 MiB
    stream = _frame(body) + _frame(b"next")
    protocol = Receiving()
    chunk = 64 * 1024
    reads = [stream[i:i + chunk] for i in range(0, len(stream), chunk)]
    for read in reads[:-1]:
        protocol.dataReceived(read)
    assert protocol.frames == []  # kept as pieces until the frame is whole
    protocol.dataReceived(reads[-1])
    assert len(protocol.frames) == 2 and protocol.frames[0] == body and protocol.frames[1] == b"next"


def test_many_small_frames_of_one_read_and_frames_split_anywhere_all_arrive_in_order():
    bodies = [bytes([i % 251]) * (i % 37) for i in range(2000)]
    stream = b"".join(_frame(body) for body in bodies)
    whole = Receiving()
    whole.dataReceived(stream)
    assert whole.frames == bodies
    for size in (1, 3, 4, 5, 7, 64, 1000):
        split = Receiving()
        for i in range(0, len(stream), size):
            split.dataReceived(stream[i:i + size])
        assert split.frames == bodies, size


def test_an_oversized_frame_is_refused_with_one_warning_and_nothing_after_it_is_read():
    protocol = Receiving(max_frame=1024)
    with capturedLogs() as logs:
        protocol.dataReceived(_frame(b"ok") + struct.pack("!I", 4096) + b"x" * 10)
        protocol.dataReceived(struct.pack("!I", 4096) + _frame(b"late"))
        protocol.connectionLost(Failure(ConnectionError("closed")))
    assert protocol.frames == [b"ok"] and protocol.transport.disconnecting
    assert len(logs) == 1 and "over the" in logs[0]["log_format"]  # and no partial-frame warning at the close


def test_a_partial_frame_is_counted_when_the_connection_is_lost():
    protocol = Receiving()
    protocol.dataReceived(struct.pack("!I", 100) + b"x" * 30)
    protocol.dataReceived(b"y" * 20)
    with capturedLogs() as logs:
        protocol.connectionLost(Failure(ConnectionError("peer went away")))
    assert [event["partial"] for event in logs] == [54]


# -- typed errors over a real pair of connections -------------------------------------------------


def operations_pair(register):
    """A client connection and a server answering with a ``PeerOperations`` dispatcher."""
    from dynamod.net.operations import PeerLimits, PeerOperations

    clock = Clock()
    state = {"stopping": False}
    operations = PeerOperations(PeerLimits(n=3, partitions=16), stopping=lambda: state["stopping"])
    register(operations)
    server = PeerProtocol(operations.answer, clock)
    client = PeerProtocol(None, clock)
    _, _, pump = iosim.connectedServerAndClient(lambda: server, lambda: client)
    return client, pump, state


def test_typed_errors_round_trip_between_two_nodes():
    from dynamod.coordinator import NotAReplica
    from dynamod.core.sizes import KeyTooLarge
    from dynamod.net.operations import local_error

    calls = []

    def register(operations):
        operations.register("coordinate_put", lambda arguments: calls.append(arguments) or defer.fail(
            KeyTooLarge(40, 30) if arguments[1] == b"big" else NotAReplica("n2 is not a replica of this key")))
        operations.register("ping", lambda _: True)

    client, pump, state = operations_pair(register)
    big = client.call("coordinate_put", [b"k", b"big", [{}, []], False, 2], timeout=5)
    elsewhere = client.call("coordinate_put", [b"k", b"v", [{}, []], False, 2], timeout=5)
    with capturedLogs() as logs:
        malformed = client.call("coordinate_put", [b"k", b"v", [{}, []], False, "2"], timeout=5)
        unknown = client.call("echo", None, timeout=5)
        pump.flush()
    state["stopping"] = True
    stopping = client.call("ping", None, timeout=5)
    pump.flush()
    codes = {}
    for name, answer in (("big", big), ("elsewhere", elsewhere), ("malformed", malformed), ("unknown", unknown),
                         ("stopping", stopping)):
        with pytest.raises(PeerError) as error:
            result_of(answer)
        codes[name] = error.value.code
        if name == "big":
            again = local_error(error.value)
            assert isinstance(again, KeyTooLarge) and (again.size, again.limit) == (40, 30)
    assert codes == {"big": Code.KEY_TOO_LARGE, "elsewhere": Code.NOT_A_REPLICA, "malformed": Code.BAD_REQUEST,
                     "unknown": Code.UNKNOWN_OPERATION, "stopping": Code.NODE_STOPPING}
    assert len(calls) == 2  # the malformed one never reached the handler
    # one line per refusal (its code's level), never a traceback
    assert [event["code"] for event in logs] == ["key_too_large", "not_a_replica", "bad_request", "unknown_operation"]
    assert not any("log_failure" in event for event in logs)
    state["stopping"] = False
    alive = client.call("ping", None, timeout=5)
    pump.flush()
    assert result_of(alive) is True  # the connection survived every refusal


def test_a_connection_that_serves_nothing_answers_unknown_operation():
    clock = Clock()
    client, other = PeerProtocol(None, clock), PeerProtocol(None, clock)
    _, _, pump = iosim.connectedServerAndClient(lambda: other, lambda: client)
    answer = client.call("ping", None, timeout=5)
    pump.flush()
    with pytest.raises(PeerError) as error:
        result_of(answer)
    assert error.value.code == Code.UNKNOWN_OPERATION


def test_an_answer_msgpack_cannot_carry_is_answered_internal_and_logged_once():
    clock = Clock()
    server = PeerProtocol(lambda op, payload, caller: object(), clock)
    client = PeerProtocol(None, clock)
    _, _, pump = iosim.connectedServerAndClient(lambda: server, lambda: client)
    answer = client.call("anything", None, timeout=5)
    with capturedLogs() as logs:
        pump.flush()
    with pytest.raises(PeerError) as error:
        result_of(answer)
    assert error.value.code == Code.INTERNAL and len(logs) == 1 and "log_failure" in logs[0]


def test_an_error_frame_of_an_older_release_is_internal_and_never_parsed():
    protocol = PeerProtocol(None, Clock())
    protocol.makeConnection(StringTransport())
    answer = protocol.call("ping", None, timeout=5)
    protocol.dataReceived(_frame(encode_frame([2, 1, "node is stopping"])))
    with pytest.raises(PeerError) as error:
        result_of(answer)
    assert error.value.code == Code.INTERNAL
