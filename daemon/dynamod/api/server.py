"""A lean HTTP/1.1 server protocol for Twisted, parsing with httptools (llhttp).

Measured on the development machine, twisted.web cost about 60 µs of CPU per request before our
handler ran, more than the whole quorum read it served; this protocol parses with llhttp in C and
writes each response with one ``write``. It speaks what the API needs: keep-alive, pipelining
(answers in order), Content-Length and chunked bodies capped while they arrive (a body over the
limit is dropped, never buffered), ``Expect: 100-continue``, HEAD, and a JSON 4xx for anything it
refuses.

What one connection may cost is bounded (``HttpLimits``): the head while it arrives, the requests
queued behind the one being answered (reading pauses while they wait), the responses unsent to a
client that does not read (no new request starts while the transport's buffer is full), the time a
head or a body may take and a connection may sit idle, and the connections per node. A request
that arrived whole is always answered before the connection closes, whatever follows it (garbage,
a timeout, a half-close).
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
from twisted.internet import defer, task
from twisted.internet.interfaces import (
    IHalfCloseableProtocol,
    IHandshakeListener,
    IPushProducer,
    IReactorTime,
    ISSLTransport,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from dynamod.net.writes import Coalescer, DirectWriter
from dynamod.security.identity import Principal
from dynamod.security.tls import peer_principal

#: Request line plus headers larger than this are refused (431) and the connection closed.
MAX_HEAD_BYTES = 64 * 1024

#: Bytes handed to llhttp at a time, so a full pipeline queue stops parsing within this much input
#: and a line without its end is caught within this much past the head limit.
FEED_SLICE = 8 * 1024

#: Bytes of a body past ``max_body`` that are read and dropped before the request is refused
#: (a client that sends a slightly larger value keeps its connection; an endless body does not).
MAX_DROPPED_BODY = 64 * 1024 * 1024

#: Seconds between checks of every connection's deadlines (one timer per server, not per request).
SWEEP_INTERVAL = 1.0

#: After a refusal the node stops answering but keeps reading (and dropping) for this long, or
#: this much, before it closes: closing with unread input sends a reset, and a reset can destroy
#: the answers still unread at the client (nginx's lingering close).
LINGER_SECONDS = 2.0
LINGER_BYTES = 64 * 1024 * 1024

#: Answer bytes a connection may leave with the writer before they are sent at once. The writer
#: holds a reactor turn's answers until the turn ends, and a pipeline answered within one turn
#: would otherwise pile up there (100 GETs of 1 MiB: +390 MiB) before the transport could say its
#: buffer is full; sent at once, the transport pauses the pipeline after about one large answer.
SEND_NOW_BYTES = 64 * 1024

_REASONS = {status.value: status.phrase for status in http.HTTPStatus}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


@attrs.frozen
class HttpLimits:
    """What one connection, and all of them together, may cost the node."""

    #: largest body kept (a larger one is flagged ``body_too_large`` and dropped while it arrives)
    max_body: int
    #: request line plus headers (431 above)
    max_head: int = MAX_HEAD_BYTES
    #: seconds from a head's first byte to its end, and the longest a body may pause (408 after)
    header_timeout: float = 10.0
    #: seconds a keep-alive connection may wait for its next request, and a client may leave its
    #: answers unread, before the connection is closed
    idle_timeout: float = 60.0
    #: open connections per server; one more is answered 503 and closed
    max_connections: int = 1024
    #: complete requests queued behind the one being answered before reading pauses
    max_pipelined: int = 32


@attrs.define
class HttpRequest:
    """One parsed request. ``path`` is raw (still percent-encoded); header names are lower-case."""

    method: str
    path: bytes
    query: bytes
    headers: dict[bytes, bytes]
    body: bytes
    body_too_large: bool = False
    #: whom the connection's client certificate names (TLS only; None: no certificate)
    client: Principal | None = None
    #: when the read that held its last bytes began (the server's clock; a read held back while
    #: earlier requests were answered keeps its own time)
    received: float = 0.0
    #: set by the handler to be called once the answer is handed to the connection (stage timing)
    on_written: Callable[[], None] | None = None

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

    def encode(self, keep_alive: bool, with_body: bool = True) -> bytes:
        """Status line, headers and (unless answering HEAD) body as bytes."""
        lines = [f"HTTP/1.1 {self.status} {_REASONS.get(self.status, 'Unknown')}",
                 f"Content-Length: {len(self.body)}"]
        if self.content_type:
            lines.append(f"Content-Type: {self.content_type}")
        lines.extend(f"{name}: {value}" for name, value in self.headers)
        if not keep_alive:
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        return head + self.body if with_body else head


#: ``handler(request) -> HttpResponse | Deferred[HttpResponse]``
Handler = Callable[[HttpRequest], Any]

#: ``observe(reason)``: a connection was closed or refused by a limit (for a metric)
Observer = Callable[[str], None]


@attrs.define
class _Pending:
    """A complete request waiting for its answer; ``canned`` answers it without the handler."""

    request: HttpRequest
    keep_alive: bool
    canned: HttpResponse | None = None


def _refusal(status: int, reason: str) -> HttpResponse:
    return HttpResponse.json(status, {"error": reason})


@implementer(IHalfCloseableProtocol, IHandshakeListener)
class HttpProtocol(Protocol):
    """One client connection."""

    log = Logger()

    def __init__(self, handler: Handler, limits: HttpLimits, clock: IReactorTime,
                 writer: Coalescer | DirectWriter | None = None, server: HttpFactory | None = None):
        self._handler = handler
        self._read_at = 0.0           # clock time the latest read began (a request's ``received``)
        self._limits = limits
        self._clock = clock
        self._writer = writer or DirectWriter()
        self._server = server
        self._parser = httptools.HttpRequestParser(self)
        self._queue: collections.deque[_Pending] = collections.deque()
        self._queued_bytes = 0
        self._busy = False            # a request is with the handler
        self._closed = False          # nothing more is written
        self._reading_done = False    # nothing more is parsed (end of input, or refused input)
        self._stopping = False        # the node is stopping: no new request starts
        self._owed_refusal: HttpResponse | None = None  # sent once the queue is answered, then close
        self._unparsed = b""          # input held while reading is paused
        self._read_paused = False     # we paused the transport (the queue is full)
        self._write_paused = False    # the transport paused us (its buffer is full)
        self._write_paused_at = 0.0
        self._in_message = False      # a request has begun and not yet completed
        self._in_head = True          # the next input bytes belong to a request head
        self._unproductive = 0        # bytes fed since the parser last delivered anything
        self._message_started = 0.0
        self._last_read = 0.0
        self._idle_since = clock.seconds()
        self._continue_owed = False   # a 100 Continue is due when this request's turn comes
        self._lingering = False       # refused: only reading (and dropping) until the client closes
        self._closing_since = 0.0     # when _close ran (a close that never completes is aborted)
        self._aborted = False
        self._dropped = 0
        self._unsent = 0              # answer bytes written since the last send_now
        self._client: Principal | None = None  # the client certificate's principal (TLS)
        self._dispatching = False     # inside _dispatch (a Deferred firing now is answered by _next)
        self._start_message()

    def _start_message(self) -> None:
        self._url = b""
        self._headers: dict[bytes, bytes] = {}
        self._body: list[bytes] = []
        self._received = 0
        self._head_bytes = 0
        self._too_large = False
        self._canned: HttpResponse | None = None

    # -- connection ----------------------------------------------------------------------------

    def connectionMade(self) -> None:
        if hasattr(self.transport, "setTcpNoDelay"):
            self.transport.setTcpNoDelay(True)
        if self._server is not None and not self._server.admit(self):
            self._closed = self._reading_done = True
            self._write(_refusal(503, f"too many connections (limit {self._limits.max_connections})")
                        .encode(keep_alive=False))
            self._writer.send_now(self.transport)
            self.transport.loseConnection()
            return
        self.transport.registerProducer(_WriteBackPressure(self), True)

    def handshakeCompleted(self) -> None:
        """TLS: note whom the client's certificate names (requests arrive only after this)."""
        self._client = peer_principal(self.transport)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._closed = self._reading_done = True
        if self._server is not None:
            self._server.forget(self)

    def readConnectionLost(self) -> None:
        """The client half-closed (or closed): answer what arrived whole, then close."""
        if self._lingering:
            self.transport.loseConnection()
            return
        self._reading_done = True
        self._in_message = False
        self._next()

    def writeConnectionLost(self) -> None:
        """The sending side closed after a refusal (``_close(linger=True)``); reading goes on."""

    def close_when_idle(self) -> None:
        """Stop taking requests: close now if none is being answered, else after its answer."""
        self._stopping = True
        if not self._busy and not self._closed:
            self._close()

    def _close(self, linger: bool = False) -> None:
        """Close once what is written is sent; with ``linger``, close only the sending side and
        drop input until the client closes, or for ``LINGER_SECONDS`` (input may follow a refusal).
        TLS has no half-close under it (its close goes with the data), so there it closes outright."""
        if self._closed:
            return
        self._closed = self._reading_done = True
        self._closing_since = self._clock.seconds()
        self._writer.send_now(self.transport)
        self.transport.unregisterProducer()
        if not linger or ISSLTransport.providedBy(self.transport):
            self.transport.loseConnection()
            return
        self._lingering = True
        self._unparsed = b""
        if self._read_paused:
            self._read_paused = False
            self.transport.resumeProducing()
        self.transport.loseWriteConnection()

    def _write(self, data: bytes) -> None:
        self._writer.write(self.transport, data)

    # -- input ---------------------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._reading_done:
            if self._lingering:
                self._dropped += len(data)
                if self._dropped > LINGER_BYTES:
                    self.transport.loseConnection()
            return
        self._last_read = self._read_at = self._clock.seconds()
        if self._read_paused:
            self._unparsed += data
            return
        self._feed(data)

    def _backlogged(self) -> bool:
        return len(self._queue) >= self._limits.max_pipelined or self._queued_bytes >= self._limits.max_body

    def _feed(self, data: bytes) -> None:
        view = memoryview(data) if len(data) > FEED_SLICE else data  # one request: no slicing
        offset = 0
        while offset < len(view) and not self._reading_done:
            piece = view[offset:offset + FEED_SLICE] if view is not data else data
            offset += len(piece)
            try:
                self._parser.feed_data(piece)
            except httptools.HttpParserUpgrade:
                self._refuse(400, "protocol upgrades are not supported")
                return
            except httptools.HttpParserError as exc:
                # llhttp wraps exceptions raised in callbacks: what stopped it is noted in state
                if self._reading_done:
                    return  # a callback refused or closed; parsing stopped there
                if self._head_bytes > self._limits.max_head:
                    self._refuse_head()
                else:
                    self._refuse(400, f"malformed HTTP request: {exc}")
                return
            # llhttp keeps a header (or trailer) line until its end: whatever it has not handed
            # over yet counts against the head limit, not only whole lines
            self._unproductive += len(piece)
            if self._in_message and self._unproductive > self._limits.max_head + FEED_SLICE:
                self._refuse_head()
                return
            if self._backlogged() and not self._reading_done:
                self._unparsed = bytes(view[offset:])
                self._read_paused = True
                self.transport.pauseProducing()
                return
        self._unparsed = b""

    def _resume_reading(self) -> None:
        limits = self._limits
        if (not self._read_paused or self._reading_done or len(self._queue) > limits.max_pipelined // 2
                or self._queued_bytes > limits.max_body // 2):
            return
        self._read_paused = False
        self.transport.resumeProducing()
        # Input held (here or in the kernel) while this side did not read is not late input.
        self._last_read = self._message_started = self._clock.seconds()
        held, self._unparsed = self._unparsed, b""
        if held:
            self._feed(held)

    def _refuse_head(self) -> None:
        self._refuse(431, f"request line and headers exceed {self._limits.max_head} bytes")

    def _refuse(self, status: int, reason: str) -> None:
        """Refuse the input from here on: what arrived whole is answered first, then this, then close."""
        if self._reading_done:
            return
        self._reading_done = True
        self._in_message = False
        self._unparsed = b""
        self._owed_refusal = _refusal(status, reason)
        self._next()

    # -- deadlines (checked by the server's sweep) ---------------------------------------------

    def check_deadline(self, now: float) -> None:
        """Close or refuse this connection if it has waited past a limit."""
        limits = self._limits
        if self._aborted:
            return
        if self._closed:
            if self._lingering and now - self._closing_since >= LINGER_SECONDS:
                self._lingering = False
                self.transport.loseConnection()
            elif now - self._closing_since >= limits.idle_timeout:
                self._abort("unread_answers")  # the close waits for answers a client never reads
            return
        if self._write_paused:
            if now - self._write_paused_at >= limits.idle_timeout:
                self._abort("unread_answers")
            return
        if self._in_message and not self._read_paused:
            if self._in_head:
                if now - self._message_started >= limits.header_timeout:
                    self._observe("header_timeout")
                    self._refuse(408, f"request head not complete within {limits.header_timeout:g} s")
            elif not self._continue_owed and now - self._last_read >= limits.header_timeout:
                # (while a 100 Continue is owed the client rightly waits for it)
                self._observe("body_timeout")
                self._refuse(408, f"request body paused for {limits.header_timeout:g} s")
            return
        if not (self._busy or self._queue or self._in_message) and now - self._idle_since >= limits.idle_timeout:
            self._observe("idle")
            self._close()

    def _abort(self, reason: str) -> None:
        self._observe(reason)
        self._aborted = self._closed = self._reading_done = True
        self.transport.abortConnection()

    def _observe(self, reason: str) -> None:
        if self._server is not None:
            self._server.observe(reason)

    # -- httptools callbacks -------------------------------------------------------------------

    def _progress(self) -> None:
        """Every callback: the parser delivered something; stop it if the input was refused
        meanwhile (llhttp goes on through the rest of the piece otherwise)."""
        if self._reading_done:
            raise _StopParsing()
        self._unproductive = 0

    def on_message_begin(self) -> None:
        self._progress()
        self._start_message()
        self._in_message = True
        self._in_head = True
        self._message_started = self._last_read

    def on_url(self, url: bytes) -> None:
        self._progress()
        self._url += url
        self._count_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._progress()
        self._count_head(len(name) + len(value))
        if self._in_head:  # a trailer after a chunked body counts, but never replaces a header
            self._headers[name.lower()] = value

    def _count_head(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > self._limits.max_head:
            raise _HeadTooLarge()

    def on_headers_complete(self) -> None:
        self._progress()
        self._in_head = False
        length = self._headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self._limits.max_body:
            self._too_large = True
        expect = self._headers.get(b"expect")
        if expect is not None and self._parser.get_http_version() != "1.0":  # RFC 9110: 1.0 ignores it
            self._expect(expect)

    def _expect(self, expect: bytes) -> None:
        if expect.lower() != b"100-continue":
            early = _refusal(417, f"unsupported Expect: {expect.decode('latin-1')!r} (only 100-continue)")
        elif self._too_large:
            early = _refusal(413, f"body exceeds {self._limits.max_body} bytes")
        else:
            self._continue_owed = True
            self._send_continue_if_due()
            return
        if self._busy or self._queue:
            self._canned = early  # answered in its turn; the client sends the body after its timeout
            return
        # Answered from the head, so the client need not send the body; if it does, it is dropped.
        self._write(early.encode(keep_alive=False))
        self._in_message = False
        self._close(linger=True)
        raise _StopParsing()

    def _send_continue_if_due(self) -> None:
        if self._continue_owed and not (self._busy or self._queue or self._closed):
            self._continue_owed = False
            self._last_read = self._clock.seconds()  # the body's time starts now
            self._write(_CONTINUE)

    def on_chunk_header(self) -> None:
        self._progress()

    def on_chunk_complete(self) -> None:
        self._progress()

    def on_body(self, body: bytes) -> None:
        self._progress()
        self._continue_owed = False  # the client did not wait for it
        self._received += len(body)
        if self._too_large or self._received > self._limits.max_body:
            self._too_large = True
            self._body = []
            if self._received > self._limits.max_body + MAX_DROPPED_BODY:
                self._refuse(413, f"body exceeds {self._limits.max_body} bytes")
                raise _StopParsing()
            return
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._progress()
        self._in_message = False
        self._in_head = True
        self._continue_owed = False
        parsed = httptools.parse_url(self._url)
        request = HttpRequest(
            method=self._parser.get_method().decode("ascii"), path=parsed.path, query=parsed.query or b"",
            headers=self._headers, body=b"".join(self._body), body_too_large=self._too_large, client=self._client,
            received=self._read_at)
        keep_alive = self._parser.should_keep_alive() and self._canned is None
        self._queue.append(_Pending(request, keep_alive, self._canned))
        self._queued_bytes += len(request.body)
        self._next()

    # -- answering, in order -------------------------------------------------------------------

    def _next(self) -> None:
        """Start the queued requests in order, one at a time (a loop, not recursion, since a
        pipeline of requests answered at once can be long)."""
        while not (self._busy or self._closed or self._write_paused):
            if not self._queue:
                self._after_queue()
                break
            pending = self._queue.popleft()
            self._queued_bytes -= len(pending.request.body)
            self._busy = True
            response = self._dispatch(pending)
            if response is None:
                break  # answered later, by _answer_later
            self._answer(response, pending)
        self._resume_reading()

    def _dispatch(self, pending: _Pending) -> HttpResponse | None:
        """The answer to ``pending`` if it is ready now, else None (it comes to ``_answer_later``)."""
        if pending.canned is not None:
            return pending.canned
        try:
            result = self._handler(pending.request)
        except Exception:  # noqa: BLE001 - the handler maps its own errors; this is a bug
            self.log.failure("HTTP handler raised")
            return _refusal(500, "internal error")
        if not isinstance(result, defer.Deferred):
            return result
        ready: list[HttpResponse] = []
        result.addErrback(self._internal_error)
        self._dispatching = True
        result.addCallback(self._answer_later, pending, ready)
        self._dispatching = False
        return ready[0] if ready else None

    def _after_queue(self) -> None:
        """Every complete request is answered: send what is owed, close if input has ended."""
        if self._owed_refusal is not None:
            refusal, self._owed_refusal = self._owed_refusal, None
            self._write(refusal.encode(keep_alive=False))
            self._close(linger=True)
        elif self._reading_done or (self._stopping and not self._in_message):
            self._close()
        else:
            self._send_continue_if_due()
            if not self._in_message:
                self._idle_since = self._clock.seconds()

    def _internal_error(self, failure: Failure) -> HttpResponse:
        self.log.failure("HTTP handler failed", failure)
        return _refusal(500, f"internal error: {failure.getErrorMessage()}")

    def _answer_later(self, response: HttpResponse, pending: _Pending, ready: list[HttpResponse]) -> None:
        if self._dispatching:  # the Deferred had fired already: _next sends it, in its loop
            ready.append(response)
            return
        self._answer(response, pending)
        self._next()

    def _answer(self, response: HttpResponse, pending: _Pending) -> None:
        """Send the answer to the request being served; close if it was the last."""
        self._busy = False
        if self._closed:
            return
        keep_alive = pending.keep_alive and not self._stopping
        data = response.encode(keep_alive, with_body=pending.request.method != "HEAD")
        self._write(data)
        if pending.request.on_written is not None:
            pending.request.on_written()
        self._unsent += len(data)
        if self._unsent >= SEND_NOW_BYTES:  # counts since the last send: may overcount, never under
            self._unsent = 0
            self._writer.send_now(self.transport)  # a full buffer pauses us (_pause_answers) here
        if not keep_alive:
            self._close(linger=pending.canned is not None)  # input may follow a refused request

    # -- write back-pressure (the transport calls these through _WriteBackPressure) ------------

    def _pause_answers(self) -> None:
        self._write_paused = True
        self._write_paused_at = self._clock.seconds()

    def _resume_answers(self) -> None:
        self._write_paused = False
        self._next()


@implementer(IPushProducer)
class _WriteBackPressure:
    """Registered with the transport: while its send buffer is full, no new request starts (so a
    client that does not read holds one answer, not every answer it asked for)."""

    def __init__(self, protocol: HttpProtocol):
        self._protocol = protocol

    def pauseProducing(self) -> None:
        self._protocol._pause_answers()

    def resumeProducing(self) -> None:
        self._protocol._resume_answers()

    def stopProducing(self) -> None:
        """The connection is gone; ``connectionLost`` does the rest."""


class _HeadTooLarge(Exception):
    """Raised from a parser callback to stop parsing an oversized head."""


class _StopParsing(Exception):
    """Raised from a parser callback once the input is refused or the connection closed."""


class HttpFactory(Factory):
    """Builds ``HttpProtocol`` connections for one handler, within ``limits``."""

    noisy = False

    def __init__(self, handler: Handler, limits: HttpLimits, clock: IReactorTime,
                 writer: Coalescer | None = None, observe: Observer | None = None):
        self.handler = handler
        self.limits = limits
        self.clock = clock
        self.writer = writer
        self._observer = observe
        self.connections: set[HttpProtocol] = set()
        self._sweeper = task.LoopingCall(self._sweep)
        self._sweeper.clock = clock

    @property
    def open_connections(self) -> int:
        """Connections being served now."""
        return len(self.connections)

    def buildProtocol(self, addr: Any) -> HttpProtocol:
        protocol = HttpProtocol(self.handler, self.limits, self.clock, self.writer, self)
        protocol.factory = self
        return protocol

    def admit(self, protocol: HttpProtocol) -> bool:
        """Count a new connection in, unless the server is at its limit."""
        if len(self.connections) >= self.limits.max_connections:
            self.observe("connection_limit")
            return False
        self.connections.add(protocol)
        if not self._sweeper.running:
            self._sweeper.start(SWEEP_INTERVAL, now=False)
        return True

    def forget(self, protocol: HttpProtocol) -> None:
        """A connection closed."""
        self.connections.discard(protocol)
        if not self.connections and self._sweeper.running:
            self._sweeper.stop()

    def observe(self, reason: str) -> None:
        """Note a connection closed or refused by a limit."""
        if self._observer is not None:
            self._observer(reason)

    def _sweep(self) -> None:
        now = self.clock.seconds()
        for connection in list(self.connections):
            connection.check_deadline(now)

    def close_connections(self) -> None:
        """A stopping node: idle keep-alive connections close now, busy ones after their answer,
        so no request starts that the node could not see through."""
        for connection in list(self.connections):
            connection.close_when_idle()
