"""A lean HTTP/1.1 server protocol for Twisted, parsing with httptools (llhttp).

Measured on the development machine, twisted.web cost about 60 µs of CPU per request before our
handler ran, more than the whole quorum read it served; this protocol parses with llhttp in C and
writes each response with one ``write``. It speaks what the API needs: keep-alive, pipelining
(answers in order), Content-Length and chunked bodies capped while they arrive (a body over the
limit is dropped, never buffered), and a JSON 400 for anything llhttp rejects.
"""

from __future__ import annotations

import collections
import http
import json
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

import attrs
import httptools
from twisted.internet import defer
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from dynamod.net.writes import Coalescer, DirectWriter

#: Request line plus headers larger than this are refused (431) and the connection closed.
MAX_HEAD_BYTES = 64 * 1024

_REASONS = {status.value: status.phrase for status in http.HTTPStatus}


@attrs.define
class HttpRequest:
    """One parsed request. ``path`` is raw (still percent-encoded); header names are lower-case."""

    method: str
    path: bytes
    query: bytes
    headers: dict[bytes, bytes]
    body: bytes
    body_too_large: bool = False

    def arguments(self) -> dict[str, list[str]]:
        """The query string, parsed."""
        return parse_qs(self.query.decode("latin-1")) if self.query else {}


@attrs.frozen
class HttpResponse:
    """What to send back."""

    status: int
    body: bytes = b""
    content_type: str | None = None
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def json(cls, status: int, document: Any, headers: tuple[tuple[str, str], ...] = ()) -> HttpResponse:
        """A JSON response."""
        return cls(status, json.dumps(document).encode(), "application/json", headers)

    def encode(self, keep_alive: bool) -> bytes:
        """Status line, headers and body as bytes."""
        lines = [f"HTTP/1.1 {self.status} {_REASONS.get(self.status, 'Unknown')}",
                 f"Content-Length: {len(self.body)}"]
        if self.content_type:
            lines.append(f"Content-Type: {self.content_type}")
        lines.extend(f"{name}: {value}" for name, value in self.headers)
        if not keep_alive:
            lines.append("Connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + self.body


#: ``handler(request) -> HttpResponse | Deferred[HttpResponse]``
Handler = Callable[[HttpRequest], Any]


class HttpProtocol(Protocol):
    """One client connection."""

    log = Logger()

    def __init__(self, handler: Handler, max_body: int, writer: Coalescer | DirectWriter | None = None):
        self._handler = handler
        self._max_body = max_body
        self._writer = writer or DirectWriter()
        self._parser = httptools.HttpRequestParser(self)
        self._queue: collections.deque[tuple[HttpRequest, bool]] = collections.deque()
        self._busy = False
        self._closed = False
        self._stopping = False
        self._start_message()

    def _start_message(self) -> None:
        self._url = b""
        self._headers: dict[bytes, bytes] = {}
        self._body: list[bytes] = []
        self._received = 0
        self._head_bytes = 0
        self._too_large = False

    def connectionMade(self) -> None:
        if hasattr(self.transport, "setTcpNoDelay"):
            self.transport.setTcpNoDelay(True)
        if isinstance(getattr(self, "factory", None), HttpFactory):
            self.factory.connections.add(self)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._closed = True
        if isinstance(getattr(self, "factory", None), HttpFactory):
            self.factory.connections.discard(self)

    def close_when_idle(self) -> None:
        """Stop taking requests: close now if none is being answered, else after its answer."""
        self._stopping = True
        if not self._busy and not self._closed:
            self._closed = True
            self.transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        if self._closed:
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._refuse(400, "protocol upgrades are not supported")
        except httptools.HttpParserError as exc:
            # llhttp wraps exceptions raised in callbacks, so the head limit is noted in a flag
            if self._head_bytes > MAX_HEAD_BYTES:
                self._refuse(431, f"request line and headers exceed {MAX_HEAD_BYTES} bytes")
            else:
                self._refuse(400, f"malformed HTTP request: {exc}")

    def _refuse(self, status: int, reason: str) -> None:
        if not self._busy:
            self._writer.write(self.transport, HttpResponse.json(status, {"error": reason}).encode(keep_alive=False))
        self._closed = True
        self.transport.loseConnection()

    # -- httptools callbacks -------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._start_message()

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._count_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.lower()] = value
        self._count_head(len(name) + len(value))

    def _count_head(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > MAX_HEAD_BYTES:
            raise _HeadTooLarge()

    def on_headers_complete(self) -> None:
        length = self._headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self._max_body:
            self._too_large = True

    def on_body(self, body: bytes) -> None:
        if self._too_large:
            return
        self._received += len(body)
        if self._received > self._max_body:
            self._too_large = True
            self._body = []
            return
        self._body.append(body)

    def on_message_complete(self) -> None:
        parsed = httptools.parse_url(self._url)
        request = HttpRequest(
            method=self._parser.get_method().decode("ascii"), path=parsed.path, query=parsed.query or b"",
            headers=self._headers, body=b"".join(self._body), body_too_large=self._too_large)
        self._queue.append((request, self._parser.should_keep_alive()))
        self._next()

    # -- answering, in order -------------------------------------------------------------------

    def _next(self) -> None:
        if self._busy or not self._queue or self._closed:
            return
        self._busy = True
        request, keep_alive = self._queue.popleft()
        try:
            result = self._handler(request)
        except Exception:  # noqa: BLE001 - the handler maps its own errors; this is a bug
            self.log.failure("HTTP handler raised")
            result = HttpResponse.json(500, {"error": "internal error"})
        if isinstance(result, defer.Deferred):
            result.addErrback(self._internal_error)
            result.addCallback(self._send, keep_alive)
        else:
            self._send(result, keep_alive)

    def _internal_error(self, failure: Failure) -> HttpResponse:
        self.log.failure("HTTP handler failed", failure)
        return HttpResponse.json(500, {"error": f"internal error: {failure.getErrorMessage()}"})

    def _send(self, response: HttpResponse, keep_alive: bool) -> None:
        self._busy = False
        if self._closed:
            return
        keep_alive = keep_alive and not self._stopping
        self._writer.write(self.transport, response.encode(keep_alive))
        if not keep_alive:
            self._closed = True
            self.transport.loseConnection()
            return
        self._next()


class _HeadTooLarge(Exception):
    """Raised from a parser callback to stop parsing an oversized head."""


class HttpFactory(Factory):
    """Builds ``HttpProtocol`` connections for one handler."""

    noisy = False

    def __init__(self, handler: Handler, max_body: int, writer: Coalescer | None = None):
        self.handler = handler
        self.max_body = max_body
        self.writer = writer
        self.connections: set[HttpProtocol] = set()

    def close_connections(self) -> None:
        """A stopping node: idle keep-alive connections close now, busy ones after their answer,
        so no request starts that the node could not see through."""
        for connection in list(self.connections):
            connection.close_when_idle()

    def buildProtocol(self, addr: Any) -> HttpProtocol:
        protocol = HttpProtocol(self.handler, self.max_body, self.writer)
        protocol.factory = self
        return protocol
