"""The HTTP/1.1 protocol: keep-alive, pipelining in order, body caps, malformed input answered
after what arrived whole, back-pressure both ways, timeouts on a simulated clock, the connection
cap, ``Expect: 100-continue`` and HEAD. Every test runs on a ``StringTransport`` and a
``task.Clock``: no socket, no sleep."""

from __future__ import annotations

import json

from twisted.internet import defer, task
from twisted.internet.testing import StringTransport

from dynamod.api.server import (
    FEED_SLICE,
    LINGER_SECONDS,
    MAX_HEAD_BYTES,
    HttpFactory,
    HttpLimits,
    HttpRequest,
    HttpResponse,
)


class Recorder:
    """A handler that records requests; ``hold`` makes answers wait for ``release``."""

    def __init__(self, hold: bool = False):
        self.requests: list[HttpRequest] = []
        self.hold = hold
        self.waiting: list[tuple[defer.Deferred, HttpResponse]] = []

    def __call__(self, request: HttpRequest):
        self.requests.append(request)
        response = HttpResponse.json(200, {"path": request.path.decode(), "size": len(request.body),
                                           "too_large": request.body_too_large})
        if not self.hold:
            return response
        waiter: defer.Deferred = defer.Deferred()
        self.waiting.append((waiter, response))
        return waiter

    def release(self, index: int) -> None:
        waiter, response = self.waiting[index]
        waiter.callback(response)


class Transport(StringTransport):
    """A string transport that can close its sending side (a lingering close after a refusal)."""

    write_closed = False

    def loseWriteConnection(self) -> None:
        self.write_closed = True


def closed(transport: StringTransport) -> bool:
    """The server closed the connection, or its sending side."""
    return transport.disconnecting or getattr(transport, "write_closed", False)


class Server:
    """One ``HttpFactory`` on a simulated clock, making connections over string transports."""

    def __init__(self, handler, **limits):
        self.clock = task.Clock()
        limits.setdefault("max_body", 1000)
        self.closed: list[str] = []
        self.factory = HttpFactory(handler, HttpLimits(**limits), self.clock, observe=self.closed.append)

    def connect(self):
        protocol = self.factory.buildProtocol(None)
        transport = Transport()
        protocol.makeConnection(transport)
        return protocol, transport

    def lose(self, protocol) -> None:
        protocol.connectionLost(None)


def connect(handler, max_body: int = 1000, **limits):
    server = Server(handler, max_body=max_body, **limits)
    protocol, transport = server.connect()
    return protocol, transport, server


def responses(raw: bytes, head_only: bool = False) -> list[tuple[int, dict]]:
    """Split a stream of responses into (status, JSON body); 1xx and HEAD answers have no body."""
    found = []
    while raw:
        head, _, rest = raw.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        headers = dict(line.split(b": ", 1) for line in lines[1:])
        length = 0 if status < 200 or head_only else int(headers[b"Content-Length"])
        body, raw = rest[:length], rest[length:]
        found.append((status, json.loads(body) if body else {}))
    return found


def statuses(transport: StringTransport) -> list[int]:
    return [status for status, _ in responses(transport.value())]


GET = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"


def test_keep_alive_serves_several_requests_on_one_connection():
    handler = Recorder()
    protocol, transport, _ = connect(handler)
    protocol.dataReceived(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
    protocol.dataReceived(b"PUT /b HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
    assert [r[1]["path"] for r in responses(transport.value())] == ["/a", "/b"]
    assert handler.requests[1].body == b"abc" and not closed(transport)


def test_pipelined_requests_are_answered_in_order():
    handler = Recorder(hold=True)
    protocol, transport, _ = connect(handler)
    protocol.dataReceived(b"GET /first HTTP/1.1\r\nHost: x\r\n\r\nGET /second HTTP/1.1\r\nHost: x\r\n\r\n")
    assert len(handler.waiting) == 1  # the second waits for the first's answer
    handler.release(0)
    handler.release(1)
    assert [r[1]["path"] for r in responses(transport.value())] == ["/first", "/second"]


def test_a_long_pipeline_answered_at_once_does_not_recurse():
    def ready(request):
        return defer.succeed(HttpResponse.json(200, {}))

    protocol, transport, _ = connect(ready, max_pipelined=5000)
    protocol.dataReceived(GET * 3000)
    assert statuses(transport).count(200) == 3000


def test_query_and_raw_path_are_kept():
    handler = Recorder()
    protocol, _, _ = connect(handler)
    protocol.dataReceived(b"GET /kv/a%2Fb?r=2 HTTP/1.1\r\nHost: x\r\n\r\n")
    request = handler.requests[0]
    assert request.path == b"/kv/a%2Fb" and request.arguments() == {"r": ["2"]}


def test_a_body_over_the_limit_is_flagged_not_buffered():
    handler = Recorder()
    protocol, _, _ = connect(handler, max_body=10)
    protocol.dataReceived(b"PUT /k HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\n" + b"x" * 11)
    assert handler.requests[0].body == b"" and handler.requests[0].body_too_large


def test_a_chunked_body_is_capped_as_it_arrives():
    handler = Recorder()
    protocol, _, _ = connect(handler, max_body=10)
    protocol.dataReceived(b"PUT /k HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                          b"6\r\nxxxxxx\r\n6\r\nxxxxxx\r\n0\r\n\r\n")
    assert handler.requests[0].body_too_large and handler.requests[0].body == b""
    protocol.dataReceived(b"PUT /k HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nxxxx\r\n0\r\n\r\n")
    assert handler.requests[1].body == b"xxxx" and not handler.requests[1].body_too_large


def test_malformed_requests_get_a_json_400_and_the_connection_closes():
    protocol, transport, _ = connect(Recorder())
    protocol.dataReceived(b"THIS IS NOT HTTP\r\n\r\n")
    [(status, body)] = responses(transport.value())
    assert status == 400 and "malformed" in body["error"]
    assert closed(transport)


def test_garbage_after_a_complete_request_is_refused_after_its_answer():
    handler = Recorder()
    protocol, transport, _ = connect(handler)
    # a body longer than its Content-Length: the rest is parsed as the next request, and is garbage
    protocol.dataReceived(b"PUT /kv/k HTTP/1.1\r\nContent-Length: 1\r\n\r\nwGARBAGE \x00\r\n\r\n")
    assert [r[0] for r in responses(transport.value())] == [200, 400]
    assert handler.requests[0].body == b"w" and closed(transport)


def test_garbage_behind_a_request_being_answered_waits_for_that_answer():
    handler = Recorder(hold=True)
    protocol, transport, _ = connect(handler)
    protocol.dataReceived(GET + b"\x00\x01garbage\r\n\r\n")
    assert transport.value() == b"" and not closed(transport)
    protocol.dataReceived(GET)  # input after the refusal is ignored
    handler.release(0)
    assert statuses(transport) == [200, 400] and closed(transport)
    assert len(handler.requests) == 1


def test_a_half_closed_client_gets_its_answers_then_the_connection_closes():
    handler = Recorder(hold=True)
    protocol, transport, _ = connect(handler)
    protocol.dataReceived(GET + GET + b"GET /partial HTT")
    protocol.readConnectionLost()
    assert not closed(transport)
    handler.release(0)
    handler.release(1)
    assert statuses(transport) == [200, 200] and closed(transport)
    assert len(handler.requests) == 2  # the partial request is dropped


def test_a_half_close_with_nothing_owed_closes_at_once():
    protocol, transport, _ = connect(Recorder())
    protocol.dataReceived(GET)
    protocol.readConnectionLost()
    assert statuses(transport) == [200] and closed(transport)


def test_oversized_headers_get_431():
    protocol, transport, _ = connect(Recorder())
    protocol.dataReceived(b"GET / HTTP/1.1\r\nX-Big: " + b"x" * (MAX_HEAD_BYTES + 1) + b"\r\n\r\n")
    assert statuses(transport) == [431] and closed(transport)


def test_a_header_line_without_its_end_is_refused_while_it_arrives():
    protocol, transport, _ = connect(Recorder())
    fed = 0
    protocol.dataReceived(b"GET / HTTP/1.1\r\nX-Big: ")
    while not closed(transport) and fed < 16 * 1024 * 1024:
        protocol.dataReceived(b"x" * 4096)
        fed += 4096
    assert statuses(transport) == [431]
    assert fed <= MAX_HEAD_BYTES + FEED_SLICE + 4096


def test_reading_pauses_while_the_pipeline_is_full_and_resumes_at_half():
    handler = Recorder(hold=True)
    protocol, transport, _ = connect(handler, max_pipelined=4)
    protocol.dataReceived(GET * 200)
    assert transport.producerState == "paused" and len(handler.waiting) == 1
    handler.release(0)
    assert transport.producerState == "paused"  # far from half yet
    index = 1
    while len(handler.waiting) > index:
        handler.release(index)
        index += 1
    assert index == 200 and statuses(transport) == [200] * 200
    assert transport.producerState == "producing" and not closed(transport)


def test_no_request_starts_while_the_send_buffer_is_full():
    handler = Recorder()
    protocol, transport, _ = connect(handler)
    transport.producer.pauseProducing()  # what the transport does when its buffer fills
    protocol.dataReceived(GET * 3)
    assert handler.requests == []
    transport.producer.resumeProducing()
    assert len(handler.requests) == 3 and statuses(transport) == [200] * 3


def test_a_client_that_never_reads_is_reset_after_the_idle_timeout():
    protocol, transport, server = connect(Recorder(), idle_timeout=60.0)
    transport.producer.pauseProducing()
    protocol.dataReceived(GET)
    server.clock.advance(59)
    assert not transport.disconnected
    server.clock.advance(2)
    assert transport.disconnected and server.closed == ["unread_answers"]


def test_a_head_that_trickles_in_is_refused_after_the_header_timeout():
    protocol, transport, server = connect(Recorder(), header_timeout=10.0)
    for byte in b"GET / HTTP/1.1\r\nX-Slow: abcdefgh":
        protocol.dataReceived(bytes([byte]))
        server.clock.advance(0.5)
        if closed(transport):
            break
    [(status, body)] = responses(transport.value())
    assert status == 408 and "head" in body["error"] and closed(transport)
    assert server.closed == ["header_timeout"]


def test_a_paused_body_is_refused_and_earlier_requests_still_answered():
    handler = Recorder(hold=True)
    protocol, transport, server = connect(handler, header_timeout=10.0)
    protocol.dataReceived(GET + b"PUT /k HTTP/1.1\r\nContent-Length: 10\r\n\r\nabcde")
    server.clock.advance(11)
    assert transport.value() == b""  # the 408 waits for the answer owed before it
    handler.release(0)
    assert statuses(transport) == [200, 408] and closed(transport)
    assert server.closed == ["body_timeout"]


def test_an_idle_keep_alive_connection_is_closed_quietly():
    protocol, transport, server = connect(Recorder(), idle_timeout=60.0)
    protocol.dataReceived(GET)
    server.clock.advance(30)
    protocol.dataReceived(GET)  # a new request restarts the idle time
    server.clock.advance(59)
    assert not closed(transport)
    server.clock.advance(2)
    assert closed(transport) and statuses(transport) == [200, 200]
    assert server.closed == ["idle"]


def test_no_timer_runs_while_a_request_is_being_answered():
    handler = Recorder(hold=True)
    protocol, transport, server = connect(handler, idle_timeout=5.0, header_timeout=5.0)
    protocol.dataReceived(GET)
    server.clock.advance(30)
    handler.release(0)
    assert statuses(transport) == [200] and not closed(transport)


def test_connections_past_the_cap_are_refused_with_503():
    server = Server(Recorder(), max_connections=2)
    first, _ = server.connect()
    server.connect()
    refused, transport = server.connect()
    [(status, body)] = responses(transport.value())
    assert status == 503 and "limit 2" in body["error"] and closed(transport)
    assert server.factory.open_connections == 2 and server.closed == ["connection_limit"]
    server.lose(refused)
    server.lose(first)
    _, again = server.connect()
    assert again.value() == b"" and server.factory.open_connections == 2


def test_the_sweep_timer_runs_only_while_connections_are_open():
    server = Server(Recorder())
    protocol, _ = server.connect()
    assert len(server.clock.getDelayedCalls()) == 1
    server.lose(protocol)
    assert server.clock.getDelayedCalls() == []


def test_expect_100_continue_is_answered_before_the_body():
    handler = Recorder()
    protocol, transport, _ = connect(handler)
    protocol.dataReceived(b"PUT /k HTTP/1.1\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
    assert transport.value() == b"HTTP/1.1 100 Continue\r\n\r\n"
    protocol.dataReceived(b"abcd")
    assert statuses(transport) == [100, 200] and handler.requests[0].body == b"abcd"


def test_expect_100_continue_waits_for_the_answers_ahead():
    handler = Recorder(hold=True)
    protocol, transport, _ = connect(handler)
    protocol.dataReceived(GET + b"PUT /k HTTP/1.1\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
    assert transport.value() == b""
    handler.release(0)
    assert statuses(transport) == [200, 100]
    protocol.dataReceived(b"abcd")
    handler.release(1)
    assert statuses(transport) == [200, 100, 200]


def test_expect_with_a_body_too_large_is_refused_from_the_head():
    handler = Recorder()
    protocol, transport, _ = connect(handler, max_body=10)
    protocol.dataReceived(b"PUT /k HTTP/1.1\r\nContent-Length: 11\r\nExpect: 100-continue\r\n\r\n")
    [(status, _)] = responses(transport.value())
    assert status == 413 and b"Connection: close" in transport.value()
    protocol.dataReceived(b"x" * 11)  # a client that sends the body anyway: dropped, then closed
    assert handler.requests == [] and closed(transport) and statuses(transport) == [413]


def test_an_unknown_expectation_gets_417():
    handler = Recorder()
    protocol, transport, _ = connect(handler)
    protocol.dataReceived(b"PUT /k HTTP/1.1\r\nContent-Length: 1\r\nExpect: teapot\r\n\r\nx")
    assert statuses(transport) == [417] and handler.requests == [] and closed(transport)


def test_expect_is_ignored_on_http_1_0():
    handler = Recorder()
    protocol, transport, _ = connect(handler)
    protocol.dataReceived(b"PUT /k HTTP/1.0\r\nContent-Length: 1\r\nExpect: 100-continue\r\n\r\nx")
    assert statuses(transport) == [200]


def test_head_answers_carry_no_body():
    protocol, transport, _ = connect(Recorder())
    protocol.dataReceived(b"HEAD /a HTTP/1.1\r\nHost: x\r\n\r\n" + GET)
    head, _, rest = transport.value().partition(b"\r\n\r\n")
    get_length = len(json.dumps({"path": "/a", "size": 0, "too_large": False}))
    assert f"Content-Length: {get_length}".encode() in head
    assert rest.startswith(b"HTTP/1.1 200 OK")  # the GET's answer follows the HEAD's head at once


def test_connection_close_is_honoured():
    protocol, transport, _ = connect(Recorder())
    protocol.dataReceived(b"GET /a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert b"Connection: close" in transport.value() and closed(transport)


def test_a_stopping_server_closes_idle_connections_and_busy_ones_after_their_answer():
    handler = Recorder(hold=True)
    server = Server(handler)
    idle, idle_transport = server.connect()
    busy, busy_transport = server.connect()
    busy.dataReceived(GET)
    server.factory.close_connections()
    assert closed(idle_transport) and not closed(busy_transport)
    handler.release(0)
    assert b"Connection: close" in busy_transport.value() and closed(busy_transport)


def test_a_failing_handler_becomes_a_500():
    def broken(request):
        return defer.fail(RuntimeError("boom"))

    protocol, transport, _ = connect(broken)
    protocol.dataReceived(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
    assert statuses(transport) == [500]
    protocol.connectionLost(None)


class ClosingTransport(Transport):
    """Records what had been written when the connection was asked to close."""

    written_at_close: bytes | None = None

    def loseConnection(self) -> None:
        self.written_at_close = self.value()
        super().loseConnection()

    def loseWriteConnection(self) -> None:
        self.written_at_close = self.value()
        super().loseWriteConnection()


def test_a_refusal_from_a_timer_is_sent_before_the_close_with_a_coalescing_writer():
    from dynamod.net.writes import Coalescer

    clock = task.Clock()
    factory = HttpFactory(Recorder(), HttpLimits(max_body=1000, header_timeout=1.0), clock, writer=Coalescer(clock))
    protocol = factory.buildProtocol(None)
    transport = ClosingTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(b"GET / HTTP/1.1\r\nX-Slow: ")
    clock.advance(2)
    assert transport.written_at_close is not None and transport.written_at_close.startswith(b"HTTP/1.1 408 ")


def test_after_a_refusal_input_is_dropped_until_the_client_closes_or_the_linger_ends():
    protocol, transport, server = connect(Recorder())
    protocol.dataReceived(b"NOT HTTP\r\n\r\n")
    assert statuses(transport) == [400] and transport.write_closed and not transport.disconnecting
    protocol.dataReceived(b"GET /a HTTP/1.1\r\n\r\n" * 10)  # dropped, never answered
    protocol.readConnectionLost()
    assert transport.disconnecting and statuses(transport) == [400]
    other, other_transport = server.connect()
    other.dataReceived(b"NOT HTTP\r\n\r\n")
    server.clock.advance(LINGER_SECONDS + 1)
    assert other_transport.disconnecting


class BoundedTransport(Transport):
    """Pauses its producer once more than ``limit`` bytes are buffered, as a TCP transport does."""

    limit = 64 * 1024
    paused_producer = False

    def write(self, data: bytes) -> None:
        super().write(data)
        if self.producer is not None and len(self.value()) > self.limit and not self.paused_producer:
            self.paused_producer = True
            self.producer.pauseProducing()


def test_a_pipeline_answered_within_one_turn_stops_once_the_send_buffer_fills():
    from dynamod.net.writes import Coalescer

    answered = []

    def large(request):
        answered.append(request)
        return HttpResponse(200, b"v" * 100_000)

    clock = task.Clock()
    factory = HttpFactory(large, HttpLimits(max_body=1000), clock, writer=Coalescer(clock))
    protocol = factory.buildProtocol(None)
    transport = BoundedTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(GET * 10)
    assert len(answered) == 1  # not all ten held by the writer until the turn ends
    transport.clear()
    transport.paused_producer = False
    transport.producer.resumeProducing()
    assert len(answered) == 2


def test_a_close_that_never_drains_is_aborted_after_the_idle_timeout():
    protocol, transport, server = connect(Recorder(), idle_timeout=5.0)
    protocol.dataReceived(b"GET /a HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert transport.disconnecting and not transport.disconnected  # waits for a client that never reads
    server.clock.advance(7)
    assert transport.disconnected and server.closed == ["unread_answers"]


def test_trailers_count_against_the_head_limit_and_never_replace_headers():
    handler = Recorder()
    protocol, transport, _ = connect(handler)
    protocol.dataReceived(b"PUT /k HTTP/1.1\r\nX-Context: real\r\nTransfer-Encoding: chunked\r\n\r\n"
                          b"1\r\nx\r\n0\r\nX-Context: forged\r\n\r\n")
    assert handler.requests[0].headers[b"x-context"] == b"real"
    protocol.dataReceived(b"PUT /k HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX-T: ")
    fed = 0
    while not closed(transport) and fed < 4 * 1024 * 1024:
        protocol.dataReceived(b"x" * 4096)
        fed += 4096
    assert statuses(transport) == [200, 431] and fed <= MAX_HEAD_BYTES + 2 * FEED_SLICE + 4096


def test_a_client_waiting_for_100_continue_is_not_timed_out():
    handler = Recorder(hold=True)
    protocol, transport, server = connect(handler, header_timeout=10.0)
    protocol.dataReceived(GET + b"PUT /k HTTP/1.1\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
    server.clock.advance(12)  # the answer ahead takes long; the 100 is held back meanwhile
    handler.release(0)
    assert statuses(transport) == [200, 100]
    server.clock.advance(5)  # the body's time starts with the 100
    protocol.dataReceived(b"abcd")
    handler.release(1)
    assert statuses(transport) == [200, 100, 200]


def test_nothing_is_written_after_an_early_refusal_in_the_same_read():
    handler = Recorder()
    protocol, transport, _ = connect(handler, max_body=10)
    protocol.dataReceived(b"PUT /k HTTP/1.1\r\nContent-Length: 11\r\nExpect: 100-continue\r\n\r\nxxxxxxxxxxx"
                          b"PUT /k HTTP/1.1\r\nContent-Length: 1\r\nExpect: 100-continue\r\n\r\n")
    assert statuses(transport) == [413] and handler.requests == [] and transport.write_closed


def test_an_endless_body_is_refused_once_far_past_the_limit(monkeypatch):
    from dynamod.api import server as http_server

    monkeypatch.setattr(http_server, "MAX_DROPPED_BODY", 10_000)
    handler = Recorder()
    protocol, transport, _ = connect(handler, max_body=100)
    protocol.dataReceived(b"PUT /k HTTP/1.1\r\nContent-Length: 101\r\n\r\n" + b"x" * 101)  # slightly over: kept
    assert statuses(transport) == [200] and handler.requests[0].body_too_large and not closed(transport)
    protocol.dataReceived(b"PUT /k HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
    for _ in range(20):
        protocol.dataReceived(b"400\r\n" + b"x" * 1024 + b"\r\n")
    assert statuses(transport) == [200, 413] and closed(transport) and len(handler.requests) == 1


def test_a_refusal_answered_in_turn_lingers_for_the_input_after_it():
    handler = Recorder(hold=True)
    protocol, transport, _ = connect(handler)
    protocol.dataReceived(GET + b"PUT /k HTTP/1.1\r\nContent-Length: 1\r\nExpect: teapot\r\n\r\nx" + GET)
    handler.release(0)
    assert statuses(transport) == [200, 417] and transport.write_closed and not transport.disconnecting


def test_input_held_while_reading_paused_is_not_taken_for_late():
    handler = Recorder(hold=True)
    protocol, transport, server = connect(handler, max_pipelined=2, header_timeout=10.0)
    protocol.dataReceived(GET * 4 + b"GET /partial HTTP/1.1\r\nX-A: ")
    assert transport.producerState == "paused"
    server.clock.advance(30)
    for index in range(4):
        handler.release(index)
    server.clock.advance(1)
    assert statuses(transport) == [200] * 4 and not closed(transport)
