"""A whole cluster in one process: coordinators over memory engines, wired by an in-memory network
whose links can be cut or silenced, on a fake clock (Tahoe's no_network, for Dynamo)."""

from __future__ import annotations

from typing import Any

import msgpack
from twisted.internet import defer
from twisted.internet.task import Clock

from dynamod.coordinator import Coordinator, QuorumSettings
from dynamod.core.ring import Ring
from dynamod.net.operations import error_payload
from dynamod.net.protocol import PeerError, PeerTimeout, PeerUnavailable
from dynamod.storage.memory import MemoryEngine
from dynamod.storage.store import Store


class SimNetwork:
    """Delivers peer requests between nodes (anything with ``handle_peer_request``); ``down`` nodes
    refuse, ``silent`` ones never answer, and ``cut`` links (pairs of nodes) drop every message."""

    def __init__(self, clock: Clock):
        self.clock = clock
        self.nodes: dict[str, Any] = {}
        self.down: set[str] = set()
        self.silent: set[str] = set()
        self.cut: set[frozenset[str]] = set()
        self.sent: list[tuple[str, str, str]] = []

    def partition(self, *sides: set[str]) -> None:
        """Cut every link between nodes on different sides."""
        for i, side in enumerate(sides):
            for other in sides[i + 1:]:
                self.cut |= {frozenset((a, b)) for a in side for b in other}

    def heal(self) -> None:
        self.cut.clear()

    def deliver(self, source: str, target: str, op: str, payload: Any, timeout: float) -> defer.Deferred:
        self.sent.append((source, target, op))
        if target in self.down or source in self.down or frozenset((source, target)) in self.cut:
            return defer.fail(PeerUnavailable(f"{target} unreachable"))
        wire = msgpack.unpackb(msgpack.packb(payload, use_bin_type=True), raw=False, strict_map_key=False)
        if target in self.silent:
            answer: defer.Deferred = defer.Deferred()
            self.clock.callLater(timeout, lambda: answer.called or answer.errback(PeerTimeout("silent")))
            return answer
        reply = defer.maybeDeferred(self.nodes[target].handle_peer_request, op, wire)

        def to_wire(value: Any) -> Any:
            return msgpack.unpackb(msgpack.packb(value, use_bin_type=True), raw=False, strict_map_key=False)

        def to_error(failure: Any) -> None:
            raise PeerError.from_wire(error_payload(failure.value))  # what the ERROR frame carries

        return reply.addCallbacks(to_wire, to_error)


class SimPeer:
    """Stands in for ``PeerClient``: the same ``call``, carried by a ``SimNetwork``."""

    def __init__(self, network: SimNetwork, source: str, target: str):
        self.network, self.source, self.target = network, source, target

    def call(self, op: str, payload: Any, timeout: float) -> defer.Deferred:
        return self.network.deliver(self.source, self.target, op, payload, timeout)


def make_cluster(size: int = 3, *, n: int = 3, r: int = 2, w: int = 2, partitions: int = 16,
                 lww: bool = False, timeout: float = 1.0):
    """Coordinators ``n1..nSIZE`` sharing one ring, network and clock."""
    clock = Clock()
    network = SimNetwork(clock)
    ids = [f"n{i}" for i in range(1, size + 1)]
    ring = Ring.initial(ids, partitions)
    settings = QuorumSettings(n=n, r=r, w=w, lww=lww, timeout=timeout)
    for node_id in ids:
        peers = {other: SimPeer(network, node_id, other) for other in ids if other != node_id}
        store = Store(MemoryEngine(), node_id)
        network.nodes[node_id] = Coordinator(node_id, ring, store, peers, settings, clock,
                                             wall_clock_ms=lambda: int(clock.seconds() * 1000),
                                             is_up=lambda node: node not in network.down)
    return network, clock


def fired(d: defer.Deferred) -> Any:
    """The result of a Deferred that must already have fired."""
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "deferred has not fired"
    if hasattr(results[0], "raiseException"):
        results[0].raiseException()
    return results[0]
