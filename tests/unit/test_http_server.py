"""The HTTP/1.1 protocol: keep-alive, pipelining in order, body caps, malformed input."""

from __future__ import annotations

import json

from twisted.internet import defer
from twisted.internet.testing import StringTransport

from dynamod.api.server import MAX_HEAD_BYTES, HttpProtocol, HttpRequest, HttpResponse


class Recorder:
    """A handler that records requests; ``hold`` makes answers wait for ``release``."""

    def __init__(self, hold: bool = False):
        self.requests: list[HttpRequest] = []
        self.hold = hold
        self.waiting: list[tuple[defer.Deferred, HttpRequest]] = []

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


def connect(handler, max_body: int = 1000):
    protocol = HttpProtocol(handler, max_body)
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport


def responses(raw: bytes) -> list[tuple[int, dict]]:
    """Split a stream of responses into (status, JSON body)."""
    found = []
    while raw:
        head, _, rest = raw.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        headers = dict(line.split(b": ", 1) for line in lines[1:])
        length = int(headers[b"Content-Length"])
        body, raw = rest[:length], rest[length:]
        found.append((status, json.loads(body) if body else {}))
    return found


def test_keep_alive_serves_several_requests_on_one_connection():
    handler = Recorder()
    protocol, transport = connect(handler)
    protocol.dataReceived(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
    protocol.dataReceived(b"PUT /b HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
    assert [r[1]["path"] for r in responses(transport.value())] == ["/a", "/b"]
    assert handler.requests[1].body == b"abc" and not transport.disconnecting


def test_pipelined_requests_are_answered_in_order():
    handler = Recorder(hold=True)
    protocol, transport = connect(handler)
    protocol.dataReceived(b"GET /first HTTP/1.1\r\nHost: x\r\n\r\nGET /second HTTP/1.1\r\nHost: x\r\n\r\n")
    assert len(handler.waiting) == 1  # the second waits for the first's answer
    handler.release(0)
    handler.release(1)
    assert [r[1]["path"] for r in responses(transport.value())] == ["/first", "/second"]


def test_query_and_raw_path_are_kept():
    handler = Recorder()
    protocol, _ = connect(handler)
    protocol.dataReceived(b"GET /kv/a%2Fb?r=2 HTTP/1.1\r\nHost: x\r\n\r\n")
    request = handler.requests[0]
    assert request.path == b"/kv/a%2Fb" and request.arguments() == {"r": ["2"]}


def test_a_body_over_the_limit_is_flagged_not_buffered():
    handler = Recorder()
    protocol, transport = connect(handler, max_body=10)
    protocol.dataReceived(b"PUT /k HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\n" + b"x" * 11)
    assert handler.requests[0].body == b"" and handler.requests[0].body_too_large


def test_a_chunked_body_is_capped_as_it_arrives():
    handler = Recorder()
    protocol, _ = connect(handler, max_body=10)
    protocol.dataReceived(b"PUT /k HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                          b"6\r\nxxxxxx\r\n6\r\nxxxxxx\r\n0\r\n\r\n")
    assert handler.requests[0].body_too_large and handler.requests[0].body == b""
    protocol.dataReceived(b"PUT /k HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nxxxx\r\n0\r\n\r\n")
    assert handler.requests[1].body == b"xxxx" and not handler.requests[1].body_too_large


def test_malformed_requests_get_a_json_400_and_the_connection_closes():
    protocol, transport = connect(Recorder())
    protocol.dataReceived(b"THIS IS NOT HTTP\r\n\r\n")
    [(status, body)] = responses(transport.value())
    assert status == 400 and "malformed" in body["error"]
    assert transport.disconnecting


def test_oversized_headers_get_431():
    protocol, transport = connect(Recorder())
    protocol.dataReceived(b"GET / HTTP/1.1\r\nX-Big: " + b"x" * (MAX_HEAD_BYTES + 1) + b"\r\n\r\n")
    assert responses(transport.value())[0][0] == 431 and transport.disconnecting


def test_connection_close_is_honoured():
    protocol, transport = connect(Recorder())
    protocol.dataReceived(b"GET /a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert b"Connection: close" in transport.value() and transport.disconnecting


def test_a_failing_handler_becomes_a_500():
    def broken(request):
        return defer.fail(RuntimeError("boom"))

    protocol, transport = connect(broken)
    protocol.dataReceived(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
    assert responses(transport.value())[0][0] == 500
    protocol.connectionLost(None)
