"""The node: wires ring, storage, peers, coordinator and HTTP API into one Twisted service tree.

``Node`` is a ``MultiService``: the HTTP and peer listeners are children, peer clients start and
stop with it, and stopping drains queued writes before the Berkeley DB environment closes, so
SIGTERM never loses an acknowledged write. Later mechanisms (gossip, hinted handoff, anti-entropy)
join the tree as further child services.
"""

from __future__ import annotations

import time
from typing import Any

from twisted.application import service, strports
from twisted.internet import defer, task
from twisted.logger import Logger

from dynamod.antientropy import AntiEntropyService
from dynamod.api.http import Api
from dynamod.api.metrics import NodeMetrics
from dynamod.config import NodeConfig
from dynamod.coordinator import Coordinator, QuorumSettings
from dynamod.core.detector import FailureDetector
from dynamod.core.ring import Ring
from dynamod.handoff import HandoffService
from dynamod.health import HealthService
from dynamod.net.peers import PeerClient, PeerServerFactory, split_host_port
from dynamod.net.writes import Coalescer
from dynamod.storage.engine import StorageEngine
from dynamod.storage.memory import MemoryEngine
from dynamod.storage.store import Store, run_synchronously
from dynamod.storage.threads import WorkerThreads

VERSION = "0.1.0"
#: Seconds between storage housekeeping runs (Berkeley DB trickle and checkpoint).
MAINTENANCE_INTERVAL = 2.0


def open_engine(config: NodeConfig) -> StorageEngine:
    """The configured storage engine (Berkeley DB unless ``engine = "memory"``)."""
    if config.engine == "memory":
        return MemoryEngine()
    from dynamod.storage.bdb import BerkeleyEngine

    return BerkeleyEngine(config.data_dir, sync=config.sync, cache_mb=config.bdb_cache_mb)


def _listen_description(address: str) -> str:
    host, port = split_host_port(address)
    return f"tcp:{port}:interface={host}"


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 3)


class Node(service.MultiService):
    """One dynamod node."""

    log = Logger()

    def __init__(self, config: NodeConfig, reactor: Any, engine: StorageEngine | None = None):
        super().__init__()
        self.config = config
        self.reactor = reactor
        self.node_id = config.node_id
        self.started_at = time.time()
        self.metrics = NodeMetrics()
        self.settings = QuorumSettings(n=config.n, r=config.r, w=config.w, lww=config.mode == "lww",
                                       timeout=config.request_timeout,
                                       max_context_entries=config.max_context_entries)
        self.ring = Ring.initial(config.member_ids, config.partitions)
        self.engine = engine or open_engine(config)
        self._read_pool = WorkerThreads(reactor, max(1, config.read_threads), name="dynamod-read")
        # One writer thread: every Berkeley DB transaction begins and commits inside one call.
        self._write_pool = WorkerThreads(reactor, 1, name="dynamod-write")
        self._housekeeping_pool = WorkerThreads(reactor, 1, name="dynamod-housekeeping")
        self.store = Store(
            self.engine, self.node_id,
            reader=self._read_pool.run if config.read_threads else run_synchronously,
            writer=self._write_pool.run,
            housekeeper=self._housekeeping_pool.run,
            on_batch=self._observe_batch,
            read_batches=max(1, config.read_threads),
        )
        self.writer = Coalescer(reactor)
        self.peers: dict[str, PeerClient] = {}
        self.coordinator = Coordinator(self.node_id, self.ring, self.store, self.peers, self.settings,
                                       clock=reactor, wall_clock_ms=lambda: int(time.time() * 1000),
                                       on_event=self._count_event,
                                       is_up=lambda node: self.health.is_up(node))  # health comes next
        for member in config.members:
            if member.id != self.node_id:
                self.peers[member.id] = PeerClient(member.id, member.peer, reactor,
                                                   handler=self.coordinator.handle_peer_request,
                                                   max_frame=config.max_frame_size, writer=self.writer)
        self.health = HealthService(
            FailureDetector(phi_threshold=config.phi_threshold, failures_to_suspect=2,
                            first_interval=config.heartbeat_interval),
            self.peers, reactor, config.heartbeat_interval)
        self.health.setServiceParent(self)
        self.handoff = HandoffService(self.coordinator, self.health.is_up, reactor, config.handoff_interval)
        self.handoff.setServiceParent(self)
        self.anti_entropy = AntiEntropyService(self.coordinator, self.health.is_up, reactor,
                                               config.anti_entropy_interval)
        self.anti_entropy.setServiceParent(self)
        self.stored_keys_at_start = self.store.scan()  # builds the hint index and the Merkle trees
        peer_factory = PeerServerFactory(self.coordinator.handle_peer_request, reactor, config.max_frame_size,
                                         self.writer)
        for address, factory in ((config.peer, peer_factory), (config.http, Api(self).factory())):
            listener = strports.service(_listen_description(address), factory, reactor=reactor)
            listener._raiseSynchronously = True  # a port in use fails start-up instead of being logged
            listener.setServiceParent(self)

    def _count_event(self, event: str) -> None:
        {"corrupt_record": self.metrics.corrupt_records, "read_repair": self.metrics.read_repairs,
         "handoff": self.metrics.handoffs}[event].inc()

    def _observe_batch(self, size: int, seconds: float) -> None:
        self.metrics.batch_size.observe(size)
        self.metrics.batch_seconds.observe(seconds)

    def startService(self) -> None:
        for pool in (self._read_pool, self._write_pool, self._housekeeping_pool):
            pool.start()
        super().startService()
        self._maintenance = task.LoopingCall(self._maintain)
        self._maintenance.clock = self.reactor
        self._maintenance.start(MAINTENANCE_INTERVAL, now=False)
        for peer in self.peers.values():
            peer.start()
        self.log.info("node {node} (incarnation {incarnation}) serving http={http} peer={peer} "
                      "n={n} r={r} w={w} mode={mode}", node=self.node_id, incarnation=self.engine.incarnation,
                      http=self.config.http, peer=self.config.peer, n=self.config.n, r=self.config.r,
                      w=self.config.w, mode=self.config.mode)

    def _maintain(self) -> defer.Deferred:
        return self.store.maintain().addErrback(
            lambda failure: self.log.failure("storage maintenance failed", failure))

    @defer.inlineCallbacks
    def stopService(self) -> Any:
        if self._maintenance.running:
            self._maintenance.stop()
        yield super().stopService()
        yield defer.DeferredList([peer.stop() for peer in self.peers.values()])
        yield self.store.drain()
        for pool in (self._read_pool, self._write_pool, self._housekeeping_pool):
            pool.stop()
        self.store.close()
        self.log.info("node {node} stopped", node=self.node_id)

    def member_status(self, member_id: str) -> str:
        """``up`` or ``down`` as this node's failure detector sees the member."""
        if member_id == self.node_id:
            return "up"
        return "up" if self.health.is_up(member_id) else "down"

    def status(self) -> dict[str, Any]:
        """The /admin/status document."""
        return {
            "node": self.node_id,
            "version": VERSION,
            "incarnation": self.engine.incarnation,
            "uptime": round(time.time() - self.started_at, 3),
            "members": [
                {"id": m.id, "peer": m.peer, "http": m.http, "status": self.member_status(m.id),
                 "partitions": len(self.ring.partitions_of(m.id)),
                 "heard_ago": 0.0 if m.id == self.node_id else _rounded(self.health.heard_ago(m.id))}
                for m in sorted(self.config.members, key=lambda m: m.id)
            ],
            "n": self.config.n, "r": self.config.r, "w": self.config.w,
            "mode": self.config.mode, "partitions": self.config.partitions,
            "engine": self.config.engine, "sync": self.config.sync,
            "storage": {"batches": self.store.batches, "updates": self.store.updates},
            "hinted_keys": self.handoff.pending(),
            "anti_entropy": self.anti_entropy.report(),
        }

    def ring_document(self) -> dict[str, Any]:
        """The /admin/ring document: partition ownership and each partition's preference list."""
        n = self.config.n
        return {
            "node": self.node_id,
            "partitions": self.ring.partitions,
            "n": n,
            "ownership": list(self.ring.ownership),
            "preference_lists": [list(self.ring.preference_list_for_partition(p, n))
                                 for p in range(self.ring.partitions)],
        }

    def refresh_gauges(self) -> None:
        """Copy counters kept elsewhere into the metric gauges before a scrape."""
        self.metrics.storage_batches.set(self.store.batches)
        self.metrics.storage_updates.set(self.store.updates)
        self.metrics.peers_reachable.set(sum(1 for p in self.peers.values() if p.protocol is not None))
