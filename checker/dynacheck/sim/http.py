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


class _Exchange(protocol.Protocol):
    """One request on a fresh connection (``Connection: close``), its answer parsed by httptools."""

    def __init__(self, request: bytes, done: defer.Deferred):
        self.request, self.done = request, done
        self.status = 0
        self.headers: dict[str, str] = {}
        self.body: list[bytes] = []
        self.complete = False
        self._name = b""
        self.parser = httptools.HttpResponseParser(self)

    def connectionMade(self) -> None:  # noqa: N802
        self.transport.write(self.request)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.complete = True
        self.status = self.parser.get_status_code()

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ConnectionResetError(f"malformed answer: {exc}"))
            self.transport.abortConnection()
            return
        if self.complete and not self.done.called:
            self.done.callback((self.status, self.headers, b"".join(self.body)))
            self.transport.loseConnection()

    def connectionLost(self, reason: Any) -> None:  # noqa: N802
        self._fail(ConnectionResetError(f"connection lost before the answer: {reason.getErrorMessage()}"))

    def _fail(self, cause: BaseException) -> None:
        if not self.done.called:
            self.done.errback(cause)


class _Factory(protocol.ClientFactory):
    noisy = False

    def __init__(self, request: bytes, done: defer.Deferred):
        self.request, self.done = request, done

    def buildProtocol(self, addr: Any) -> _Exchange:  # noqa: N802
        return _Exchange(self.request, self.done)

    def clientConnectionFailed(self, connector: Any, reason: Any) -> None:  # noqa: N802
        if not self.done.called:
            refused = reason.check(error.ConnectionRefusedError)
            self.done.errback(ConnectionRefusedError("connection refused") if refused
                              else TimeoutError(f"connecting: {reason.getErrorMessage()}"))


class SimHttpClient:
    """``DynamoClient``'s calls for one node, on the simulated network (each answer a Deferred)."""

    def __init__(self, reactor: HostReactor, address: str, timeout: float):
        host, _, port = address.rpartition(":")
        self.reactor, self.address, self.host, self.port, self.timeout = reactor, address, host, int(port), timeout

    def perform(self, call: Call) -> defer.Deferred:
        done: defer.Deferred = defer.Deferred()
        headers = {"Host": self.address, "Connection": "close", **(call.headers or {})}
        body = call.body or b""
        if body or call.method in ("PUT", "POST", "DELETE"):
            headers["Content-Length"] = str(len(body))
        request = (f"{call.method} {call.path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
                   + "\r\n").encode("latin-1") + body
        connector = self.reactor.connectTCP(self.host, self.port, _Factory(request, done), timeout=self.timeout)
        timer = self.reactor.callLater(self.timeout, lambda: done.called or done.errback(TimeoutError("timed out")))

        def settle(result: Any) -> Any:
            if timer.active():
                timer.cancel()
            connector.disconnect()
            return result

        def unavailable(failure: Any) -> Any:
            cause = failure.value
            raise NodeUnavailable(f"{self.address}: {cause}") from cause

        return done.addBoth(settle).addCallbacks(lambda answer: call.parse(*answer), unavailable)

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
