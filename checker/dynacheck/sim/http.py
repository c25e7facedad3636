"""The checker's HTTP client inside ``dynacheck sim``: the same API calls as ``DynamoClient``
(``dynamod.client``'s ``Call``s, parsed by the same functions), sent over the simulated network
to the node's real HTTP server, answered as Deferreds on the simulated clock.

Failures map as ``DynamoClient``'s do, so the checker's client draws the same conclusions: a
refused connection is ``NodeUnavailable`` caused by ``ConnectionRefusedError`` (nothing was
sent), a timeout one caused by ``TimeoutError``, a connection lost before the whole answer one
caused by ``ConnectionResetError`` (the request may have been applied).
"""

from __future__ import annotations

from typing import Any

import httptools
from twisted.internet import defer, error, protocol

from dynacheck.sim.world import HostReactor
from dynamod.client import Call, NodeUnavailable, admin_call, get_call, replica_call, write_call


class _Connection(protocol.Protocol):
    """A kept-alive connection: one request at a time, each answer parsed by httptools."""

    def __init__(self, ready: defer.Deferred) -> None:
        self.ready = ready  # (``connected`` is Protocol's own flag)
        self.waiting: defer.Deferred | None = None
        self.lost = False
        self._reset()
        self.parser = httptools.HttpResponseParser(self)

    def _reset(self) -> None:
        self.headers: dict[str, str] = {}
        self.body: list[bytes] = []

    def connectionMade(self) -> None:  # noqa: N802
        self.ready.callback(self)

    def send(self, request: bytes, answer: defer.Deferred) -> None:
        self.waiting = answer
        self.transport.write(request)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        waiting, self.waiting = self.waiting, None
        answer = (self.parser.get_status_code(), self.headers, b"".join(self.body))
        self._reset()
        if not self.parser.should_keep_alive():
            self.transport.loseConnection()
        if waiting is not None and not waiting.called:
            waiting.callback(answer)

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ConnectionResetError(f"malformed answer: {exc}"))
            self.transport.abortConnection()

    def connectionLost(self, reason: Any) -> None:  # noqa: N802
        self.lost = True
        self._fail(ConnectionResetError(f"connection lost before the answer: {reason.getErrorMessage()}"))

    def _fail(self, cause: BaseException) -> None:
        waiting, self.waiting = self.waiting, None
        if waiting is not None and not waiting.called:
            waiting.errback(cause)


class _Factory(protocol.ClientFactory):
    noisy = False

    def __init__(self, connected: defer.Deferred):
        self.connected = connected

    def buildProtocol(self, addr: Any) -> _Connection:  # noqa: N802
        return _Connection(self.connected)

    def clientConnectionFailed(self, connector: Any, reason: Any) -> None:  # noqa: N802
        if not self.connected.called:
            refused = reason.check(error.ConnectionRefusedError)
            self.connected.errback(ConnectionRefusedError("connection refused") if refused
                                   else TimeoutError(f"connecting: {reason.getErrorMessage()}"))


#: Methods sent again when a kept-alive connection turns out closed (``DynamoClient``'s rule).
IDEMPOTENT = frozenset({"GET", "HEAD"})


class SimHttpClient:
    """``DynamoClient``'s calls for one node, on the simulated network (each answer a Deferred):
    one kept-alive connection, one request at a time (one client thread's, or the monitor's)."""

    def __init__(self, reactor: HostReactor, address: str, timeout: float):
        host, _, port = address.rpartition(":")
        self.reactor, self.address, self.host, self.port, self.timeout = reactor, address, host, int(port), timeout
        self._connection: _Connection | None = None

    def _connect(self) -> defer.Deferred:
        connected: defer.Deferred = defer.Deferred()
        self.reactor.connectTCP(self.host, self.port, _Factory(connected), timeout=self.timeout)
        return connected

    def perform(self, call: Call) -> defer.Deferred:
        headers = {"Host": self.address, **(call.headers or {})}
        body = call.body or b""
        if body or call.method in ("PUT", "POST", "DELETE"):
            headers["Content-Length"] = str(len(body))
        request = (f"{call.method} {call.path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
                   + "\r\n").encode("latin-1") + body
        done: defer.Deferred = defer.Deferred()
        timer = self.reactor.callLater(self.timeout, self._timed_out, done)

        def send(connection: _Connection, reused: bool) -> None:
            if done.called:  # timed out while connecting
                connection.transport.loseConnection()
                return
            self._connection = connection
            answer: defer.Deferred = defer.Deferred()
            connection.send(request, answer)
            answer.addCallbacks(lambda result: done.called or done.callback(result),
                                lambda failure: retry_or_fail(failure, reused))

        def retry_or_fail(failure: Any, reused: bool) -> None:
            self._connection = None
            if reused and call.method in IDEMPOTENT and not done.called:
                self._connect().addCallbacks(lambda c: send(c, False), fail)  # a stale kept-alive connection
            else:
                fail(failure)

        def fail(failure: Any) -> None:
            if not done.called:
                done.errback(failure.value)

        connection = self._connection
        if connection is not None and not connection.lost:
            send(connection, True)
        else:
            self._connect().addCallbacks(lambda c: send(c, False), fail)

        def settle(result: Any) -> Any:
            if timer.active():
                timer.cancel()
            return result

        def unavailable(failure: Any) -> Any:
            cause = failure.value
            raise NodeUnavailable(f"{self.address}: {cause}") from cause

        return done.addBoth(settle).addCallbacks(lambda answer: call.parse(*answer), unavailable)

    def _timed_out(self, done: defer.Deferred) -> None:
        if done.called:
            return
        done.errback(TimeoutError("timed out"))
        connection, self._connection = self._connection, None
        if connection is not None and connection.transport is not None:
            connection.transport.abortConnection()  # as http.client drops a connection that timed out

    def get(self, key: str) -> defer.Deferred:
        return self.perform(get_call(key))

    def write(self, key: str, value: bytes, context: str | None = None) -> defer.Deferred:
        return self.perform(write_call("PUT", key, value, context, None))

    def delete(self, key: str, context: str | None = None) -> defer.Deferred:
        return self.perform(write_call("DELETE", key, b"", context, None))

    def replica(self, key: str) -> defer.Deferred:
        return self.perform(replica_call(key))

    def status(self) -> defer.Deferred:
        return self.perform(admin_call("GET", "/admin/status"))

    def ring(self) -> defer.Deferred:
        return self.perform(admin_call("GET", "/admin/ring"))
