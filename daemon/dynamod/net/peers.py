"""Connections to the other nodes: one reconnecting client per peer, and the listening factory.

Each ``PeerClient`` keeps one TCP connection to its peer through Twisted's ``ClientService``, which
reconnects with exponential backoff. A call made while the peer is known unreachable fails at once
(so a quorum learns of the failure without waiting for its deadline); the service keeps retrying
in the background and calls succeed again as soon as the peer answers. Observers (the failure
detector) hear of every connection opened, lost or refused as it happens.

With TLS (``TlsMaterial`` given) both ends present node certificates of the cluster CA: the
listener accepts any node of the CA (what each request may claim is judged per operation), a
client accepts only the node it meant to reach (or, for a join's seed, any node).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint, wrapClientTLS
from twisted.internet.interfaces import IReactorTCP, IReactorTime
from twisted.internet.protocol import Factory

from dynamod.core.addresses import split_host_port
from dynamod.net.protocol import DEFAULT_MAX_FRAME, SILENT, IdentityCheck, PeerProtocol, PeerUnavailable, RequestHandler
from dynamod.net.writes import Coalescer
from dynamod.security.identity import Principal
from dynamod.security.tls import TlsMaterial


def any_node(principal: Principal | None) -> str | None:
    """Accept a peer whose certificate names a node (a client certificate, or none, is refused)."""
    if principal is None or not principal.is_node:
        return "its certificate names no node (a client certificate, or none)"
    return None


def node_named(node_id: str) -> IdentityCheck:
    """Accept only the node ``node_id``."""
    def check(principal: Principal | None) -> str | None:
        problem = any_node(principal)
        if problem is None and principal.name != node_id:
            problem = f"its certificate names node {principal.name!r}, not {node_id!r}"
        return problem
    return check


class PeerServerFactory(Factory):
    """Accepts peer connections and answers their requests with ``handler``."""

    noisy = False

    def __init__(self, handler: RequestHandler, clock: IReactorTime, max_frame: int = DEFAULT_MAX_FRAME,
                 writer: Coalescer | None = None, tls: bool = False):
        self.handler = handler
        self.clock = clock
        self.max_frame = max_frame
        self.writer = writer
        self.identity_check = any_node if tls else None

    def buildProtocol(self, addr: Any) -> PeerProtocol:
        protocol = PeerProtocol(self.handler, self.clock, self.max_frame, self.writer, self.identity_check)
        protocol.factory = self
        return protocol


class _ObservedEndpoint:
    """Wraps an endpoint to remember whether the latest connection attempt failed."""

    def __init__(self, endpoint: Any, client: PeerClient):
        self._endpoint = endpoint
        self._client = client

    def connect(self, factory: Any) -> defer.Deferred:
        attempt = self._endpoint.connect(factory)

        def failed(failure: Any) -> Any:
            self._client.last_error = failure.getErrorMessage()
            self._client._tell_lost(self._client.last_error)
            return failure

        return attempt.addErrback(failed)


class _ClientFactory(Factory):
    noisy = False

    def __init__(self, client: PeerClient):
        self.client = client

    def buildProtocol(self, addr: Any) -> PeerProtocol:
        client = self.client
        protocol = PeerProtocol(client.handler, client.clock, client.max_frame, client.writer, client.identity_check)
        protocol.on_connected = self.client._connected
        protocol.on_disconnected = self.client._disconnected
        protocol.factory = self
        return protocol


class PeerClient:
    """A reconnecting connection to one peer node."""

    def __init__(self, peer_id: str, address: str, reactor: IReactorTCP, *, clock: IReactorTime | None = None,
                 handler: RequestHandler | None = None, max_frame: int = DEFAULT_MAX_FRAME,
                 max_backoff: float = 1.0, writer: Coalescer | None = None, tls: TlsMaterial | None = None,
                 any_node_will_do: bool = False):
        self.peer_id = peer_id
        self.address = address
        self.clock = clock or reactor
        self.handler = handler
        self.max_frame = max_frame
        self.writer = writer
        self.protocol: PeerProtocol | None = None
        self.last_error: str | None = None
        self._observers: list[tuple[Callable[[], None], Callable[[str], None]]] = []
        host, port = split_host_port(address)
        self.identity_check: IdentityCheck | None = None
        tcp: Any = TCP4ClientEndpoint(reactor, host, port, timeout=2)
        if tls is not None:
            tcp = wrapClientTLS(tls.peer_client_options(), tcp)
            self.identity_check = any_node if any_node_will_do else node_named(peer_id)
        endpoint = _ObservedEndpoint(tcp, self)
        self.service = ClientService(
            endpoint, _ClientFactory(self),
            retryPolicy=backoffPolicy(initialDelay=0.05, maxDelay=max_backoff, factor=2.0),
            clock=self.clock,
        )

    def start(self) -> None:
        """Begin connecting (and reconnecting)."""
        self.service.startService()

    def stop(self) -> defer.Deferred:
        """Disconnect and stop retrying."""
        return self.service.stopService()

    def observe(self, opened: Callable[[], None], lost: Callable[[str], None]) -> None:
        """Call ``opened()`` whenever a connection to the peer is made and ``lost(reason)`` whenever
        one closes or an attempt fails (while the peer is stopped, once per reconnection attempt)."""
        self._observers.append((opened, lost))

    def _tell_lost(self, reason: str) -> None:
        for _, lost in self._observers:
            lost(reason)

    def _connected(self, protocol: PeerProtocol) -> None:
        self.protocol = protocol
        self.last_error = None
        for opened, _ in self._observers:
            opened()

    def _disconnected(self, protocol: PeerProtocol) -> None:
        if self.protocol is not protocol and protocol.lost_reason and protocol.lost_reason.startswith("refused"):
            self.last_error = protocol.lost_reason  # the handshake named someone else
            self._tell_lost(self.last_error)
        if self.protocol is protocol:
            self.protocol = None
            self.last_error = self.last_error or "connection lost"
            if protocol.lost_reason != SILENT:
                # A connection this side aborted for silence says nothing new: the failure
                # detector has seen the same silence (the requests that timed out).
                self._tell_lost(f"connection lost: {protocol.lost_reason}")

    def call(self, op: str, payload: Any, timeout: float) -> defer.Deferred:
        """Send one request to this peer (see ``PeerProtocol.call``)."""
        if self.protocol is not None:
            return self.protocol.call(op, payload, timeout)
        if self.last_error is not None:
            return defer.fail(PeerUnavailable(f"{self.peer_id} unreachable: {self.last_error}"))
        connecting = self.service.whenConnected(failAfterFailures=1)
        timer = self.clock.callLater(timeout, connecting.cancel)

        def send(protocol: PeerProtocol) -> defer.Deferred:
            if timer.active():
                timer.cancel()
            return protocol.call(op, payload, timeout)

        def unreachable(failure: Any) -> None:
            if timer.active():
                timer.cancel()
            raise PeerUnavailable(f"{self.peer_id} unreachable: {failure.getErrorMessage()}")

        return connecting.addCallbacks(send, unreachable)


def call_peer(peers: Mapping[str, Any], node: str, op: str, payload: Any, timeout: float) -> defer.Deferred:
    """``peers[node].call(op, payload, timeout)``, failing with ``PeerUnavailable`` (as an
    unreachable peer does: the request falls over) when ``node`` has no peer client any more.
    A node that left the cluster is dropped from ``peers`` at once, while requests that chose it
    are still in flight (read repair after the last reply, a fallover, a forward, a handoff,
    a transfer or a reap after a yield); ``dynacheck sim`` seed 6147 (5 nodes, membership
    changes) found read repair raising ``KeyError`` for a replica that had just left."""
    peer = peers.get(node)
    if peer is None:
        return defer.fail(PeerUnavailable(f"{node} is not a member any more"))
    return peer.call(op, payload, timeout)
