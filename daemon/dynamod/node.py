"""The node: wires ring, storage, peers, coordinator and HTTP API into one Twisted service tree.

``Node`` is a ``MultiService``: the HTTP and peer listeners are children, peer clients start and
stop with it, and stopping drains queued writes before the Berkeley DB environment closes, so
SIGTERM never loses an acknowledged write. Failure detection, gossip, hinted handoff, ownership
transfer and anti-entropy are further child services. The ring and the set of peer connections
follow the gossiped cluster state (``_membership_changed``).
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from typing import Any

from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory

from dynamod.antientropy import AntiEntropyService
from dynamod.api.http import Api
from dynamod.api.metrics import NodeMetrics
from dynamod.config import NodeConfig
from dynamod.coordinator import Coordinator, QuorumSettings
from dynamod.core.addresses import split_host_port
from dynamod.core.admission import AdmissionControl
from dynamod.core.detector import FailureDetector
from dynamod.core.membership import (
    ACTIVE,
    JOINING,
    LEFT,
    ClusterState,
    MalformedState,
    MemberEntry,
    with_hint_counts,
)
from dynamod.gossip import GossipService, MembershipError, StateFile
from dynamod.handoff import HandoffService
from dynamod.health import HealthService
from dynamod.net.operations import PeerLimits
from dynamod.net.peers import PeerClient, PeerServerFactory
from dynamod.net.protocol import PeerTimeout, PeerUnavailable
from dynamod.net.writes import Coalescer
from dynamod.security.auth import node_authenticator
from dynamod.security.tls import node_tls
from dynamod.storage.engine import StorageEngine
from dynamod.storage.memory import MemoryEngine
from dynamod.storage.store import Store, run_synchronously
from dynamod.storage.threads import WorkerThreads
from dynamod.tombstones import TombstoneReaper
from dynamod.transfers import TransferService

VERSION = "0.1.0"
#: Seconds between storage housekeeping runs (Berkeley DB trickle and checkpoint).
MAINTENANCE_INTERVAL = 2.0
#: Times a joining node sends its join before it gives up on an answer (a repeated join is
#: answered with the state when the first was admitted; see ask_to_join).
JOIN_ATTEMPTS = 2
#: File in the data dir holding the last known cluster state.
STATE_FILE = "cluster-state.msgpack"
#: Exit status of a node whose storage failed at run time (main.py's internal error).
EXIT_STORAGE_FAILED = 3


def exit_at_once(reason: str) -> None:
    """End the process without a clean shutdown: a failed environment cannot even be closed, and
    every acknowledged write is already durable. The next start takes the open-time path (move
    the environment aside, salvage, new incarnation), which is why this does not rebuild in place."""
    os._exit(EXIT_STORAGE_FAILED)


def open_engine(config: NodeConfig) -> StorageEngine:
    """The configured storage engine (Berkeley DB unless ``engine = "memory"``)."""
    if config.engine == "memory":
        return MemoryEngine()
    from dynamod.storage.bdb import BerkeleyEngine

    return BerkeleyEngine(config.data_dir, sync=config.sync, cache_mb=config.bdb_cache_mb)


class Listener(service.Service):
    """A TCP listener, TLS-wrapped when given options, bound when the node starts: a port that
    cannot be bound fails start-up at once (``listenTCP`` raises)."""

    def __init__(self, reactor: Any, address: str, factory: Any, tls_options: Any = None):
        self._reactor = reactor
        self._address = address
        self._factory = factory if tls_options is None else TLSMemoryBIOFactory(tls_options, False, factory)
        self._port: Any = None

    def startService(self) -> None:
        host, port = split_host_port(self._address)
        self._port = self._reactor.listenTCP(port, self._factory, interface=host)
        super().startService()

    def stopService(self) -> defer.Deferred | None:
        super().stopService()
        port, self._port = self._port, None
        return defer.maybeDeferred(port.stopListening) if port is not None else None


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 3)


class StateConflict(ValueError):
    """The data directory holds a cluster state this configuration cannot take over (another
    partition count: another cluster, e.g. a test's): restarting cannot help, the operator must
    choose (fix the configuration, or empty the data directory to found a new cluster)."""


def initial_state(config: NodeConfig, state_file: StateFile | None) -> ClusterState:
    """The stored cluster state, else the one the configured members found."""
    founding = ClusterState.initial([MemberEntry(m.id, m.peer, m.http) for m in config.members], config.partitions)
    if state_file is None:
        return founding
    try:
        stored = state_file.load(config.partitions)
    except MalformedState as exc:
        raise StateConflict(f"{state_file.path} does not hold a cluster state of {config.partitions} "
                            f"partitions: {exc} (the data directory is another cluster's: set its partitions, "
                            f"or empty {config.data_dir} to found a new cluster)") from exc
    return stored if stored is not None else founding


@defer.inlineCallbacks
def ask_to_join(client: Any, seed: str, request: list[Any], replacing: bool, timeout: float) -> Any:
    """The seed's answer to the join ``request`` (through ``client``, a ``PeerClient``). A join
    whose answer does not come (``timeout`` passed, or the connection was lost) is sent again
    (``JOIN_ATTEMPTS`` in all): the seed may have admitted this node and lost only the answer,
    and it answers a repeated join of a node still joining with the same addresses with the
    state. No answer at all is a 502 that says so, never a refusal (``dynacheck sim`` seed 9105:
    a join the seed took, whose connection was closed as silent under netem, was reported as
    refused, and the cluster kept an owner nobody ran)."""
    for attempt in range(1, JOIN_ATTEMPTS + 1):
        try:
            answer = yield client.call("join", request, timeout)
            return answer
        except (PeerTimeout, PeerUnavailable) as exc:  # no answer: the join may or may not have been taken
            if attempt == JOIN_ATTEMPTS:
                raise MembershipError(f"seed {seed} did not answer the join ({JOIN_ATTEMPTS} tries; {exc}): it may "
                                      "have admitted this node anyway (see dynactl status on the seed)", 502) from exc
        except Exception as exc:  # noqa: BLE001 - the seed's refusal, passed on
            raise MembershipError(f"seed {seed} refused the {'replacement' if replacing else 'join'}: {exc}",
                                  409) from exc


class Node(service.MultiService):
    """One dynamod node."""

    log = Logger()

    def __init__(self, config: NodeConfig, reactor: Any, engine: StorageEngine | None = None, *,
                 wall_clock: Callable[[], float] = time.time, rng: random.Random | None = None,
                 workers: Callable[[int, str], Any] | None = None, state_file: StateFile | None = None):
        """``wall_clock`` stamps versions and status (the reactor's clock runs the timers),
        ``rng`` picks gossip partners, ``workers(count, name)`` makes the pools that read, flush and
        keep house (threads by default), ``state_file`` keeps the cluster state (by default a file
        in the data dir, none for the memory engine): the simulator (``dynacheck sim``) gives its own."""
        super().__init__()
        self.config = config
        self.reactor = reactor
        self.node_id = config.node_id
        self.wall_clock = wall_clock
        self.started_at = reactor.seconds()  # the reactor's clock is monotonic: uptime must not jump
        workers = workers or (lambda count, name: WorkerThreads(reactor, count, name=name))
        self.tls = node_tls(config)
        self.auth = node_authenticator(config)
        self.metrics = NodeMetrics(reactor.seconds)
        self.settings = QuorumSettings(n=config.n, r=config.r, w=config.w, lww=config.mode == "lww",
                                       timeout=config.request_timeout,
                                       max_context_entries=config.max_context_entries,
                                       key_size_warning=config.key_size_warning, max_key_size=config.max_key_size)
        self.engine = engine or open_engine(config)
        if self.engine.recovery is not None:
            recovery = self.engine.recovery
            self.log.warn("storage was damaged ({reason}): moved to {quarantined}, {salvaged} records salvaged, "
                          "new incarnation {incarnation}; anti-entropy refills the rest",
                          reason=recovery["reason"], quarantined=recovery["quarantined"],
                          salvaged=recovery["salvaged_keys"], incarnation=self.engine.incarnation)
        #: Called once the storage has failed as a whole (the default ends the process).
        self.on_storage_failure: Callable[[str], None] = exit_at_once
        if state_file is None and config.engine == "bdb":
            state_file = StateFile(os.path.join(config.data_dir, STATE_FILE))
        state = initial_state(config, state_file)
        if state.status_of(self.node_id) == LEFT:
            raise ValueError(f"{self.node_id} has left its cluster (see {STATE_FILE} in {config.data_dir}); "
                             "to join again, start it with an empty data dir and run dynactl join")
        #: Called once this node has left the cluster (the daemon exits).
        self.on_departed: Callable[[], None] = lambda: None
        self._read_pool = workers(max(1, config.read_threads), "dynamod-read")
        # Transactions commit on the event loop; one thread makes them durable (a flush per group).
        self._flush_pool = workers(1, "dynamod-flush")
        self._housekeeping_pool = workers(1, "dynamod-housekeeping")
        self.store = Store(
            self.engine, self.node_id,
            reader=self._read_pool.run if config.read_threads else run_synchronously,
            flusher=self._flush_pool.run,
            housekeeper=self._housekeeping_pool.run,
            on_batch=self._observe_batch,
            read_batches=max(1, config.read_threads),
            on_corrupt=lambda key: self.metrics.corrupt_records.inc(),
            on_fatal=self._storage_failed,
            clock=reactor.seconds,
        )
        self.writer = Coalescer(reactor)
        self.admission = AdmissionControl(config.background_rate, config.background_latency_target)
        self.peers: dict[str, PeerClient] = {}
        self.coordinator = Coordinator(self.node_id, state.ring, self.store, self.peers, self.settings,
                                       clock=reactor, wall_clock_ms=lambda: int(wall_clock() * 1000),
                                       on_event=self._count_event,
                                       is_up=lambda node: self.health.is_up(node),  # health comes next
                                       admit=self.admit_background, limits=PeerLimits.from_config(config))
        self._connect_members(state)
        self.health = HealthService(
            FailureDetector(phi_threshold=config.phi_threshold, failures_to_suspect=2,
                            first_interval=config.heartbeat_interval),
            self.peers, reactor, config.heartbeat_interval)
        self.health.setServiceParent(self)
        self.coordinator.operations.register("goodbye", self.health.handle_goodbye)
        self.handoff = HandoffService(self.coordinator, self.health.is_up, reactor, config.handoff_interval,
                                      admit=self.admit_background)
        self.handoff.setServiceParent(self)
        self.anti_entropy = AntiEntropyService(self.coordinator, self.health.is_up, reactor,
                                               config.anti_entropy_interval, admit=self.admit_background)
        self.anti_entropy.setServiceParent(self)
        self.transfers = TransferService(self.coordinator, self.anti_entropy, self.health.is_up, reactor,
                                         config.transfer_interval, admit=self.admit_background,
                                         ring_version=lambda: self.gossip.state.ring_version)
        self.transfers.setServiceParent(self)
        self.gossip = GossipService(
            self.node_id, state, self.peers, n=config.n, clock=reactor, interval=config.gossip_interval,
            timeout=config.request_timeout, is_up=self.health.is_up, pending=self.transfers.pending,
            wall_clock_ms=lambda: int(wall_clock() * 1000), on_change=self._membership_changed, rng=rng,
            seeds=config.seeds or config.member_ids, state_file=state_file, filled=self.anti_entropy.filled)
        self.gossip.setServiceParent(self)
        self.gossip.local_hints = self.handoff.hints_for
        self.handoff.replacement = self.gossip.replacement
        if state.status_of(self.node_id) == JOINING and state.replacing(self.node_id) is not None:
            self.anti_entropy.gain_all()  # restarted before it was filled: fill it all again
        self._draining: task.LoopingCall | None = None
        self.tombstones = TombstoneReaper(self.coordinator, reactor,
                                          interval=min(10.0, max(1.0, config.tombstone_grace / 4)),
                                          grace=config.tombstone_grace, settled=self._quiet_for_reaping,
                                          admit=self.admit_background)
        self.tombstones.setServiceParent(self)
        self.coordinator.operations.register("gossip", self.gossip.handle_gossip)
        self.coordinator.operations.register("join", self.gossip.answer_join)
        self.coordinator.operations.register("cluster_info", lambda _: self.cluster_info())
        self.stored_keys_at_start = self.store.scan()  # builds the hint index and the Merkle trees
        peer_factory = PeerServerFactory(self.coordinator.handle_peer_request, reactor, config.max_frame_size,
                                         self.writer, tls=self.tls is not None)
        self.api = Api(self)
        tls = self.tls
        Listener(reactor, config.peer, peer_factory, tls and tls.peer_server_options()).setServiceParent(self)
        Listener(reactor, config.http, self.api.factory(), tls and tls.http_server_options()).setServiceParent(self)

    def _quiet_for_reaping(self) -> bool:
        """Tombstones go only while no change moves data and every member is up (a member that
        is down may hold a fallback copy it has not reported)."""
        state = self.gossip.state
        return state.settled() and all(self.health.is_up(m.id) for m in state.active() if m.id != self.node_id)

    def admit_background(self, cost: int) -> bool:
        """Admission control for background work: may ``cost`` more records move now?"""
        return self.admission.try_acquire(self.reactor.seconds(), min(cost, self.admission.burst))

    @property
    def ring(self) -> Any:
        """The current partition ownership."""
        return self.coordinator.ring

    def _new_peer(self, member: MemberEntry) -> PeerClient:
        return PeerClient(member.id, member.peer, self.reactor, handler=self.coordinator.handle_peer_request,
                          max_frame=self.config.max_frame_size, writer=self.writer, tls=self.tls)

    def _connect_members(self, state: ClusterState) -> None:
        """A peer client per active member (started when the node runs), none for departed ones."""
        for member in state.members.values():
            if member.id == self.node_id:
                continue
            client = self.peers.get(member.id)
            if member.status in ACTIVE and (client is None or client.address != member.peer):
                if client is not None:
                    client.stop()
                client = self.peers[member.id] = self._new_peer(member)
                if self.running:
                    client.start()
                    self.health.ping(member.id)
            elif member.status == LEFT and client is not None:
                del self.peers[member.id]
                self.health.forget(member.id)
                client.stop()

    def _membership_changed(self, old: ClusterState, new: ClusterState) -> None:
        if new.ownership != old.ownership:
            self.coordinator.ring = new.ring
            self.anti_entropy.ring_changed(old.ring, new.ring)
            self.log.info("ring version {version} by {author}: this node owns {owned} of {total} partitions",
                          version=new.ring_version, author=new.ring_author or "config",
                          owned=len(new.ring.partitions_of(self.node_id)), total=new.ring.partitions)
        self._connect_members(new)
        for member_id, entry in new.members.items():
            before = old.members.get(member_id)
            if before is None or before.status != entry.status:
                self.log.info("member {member} is {status}", member=member_id, status=entry.status)
        if new.status_of(self.node_id) == LEFT and old.status_of(self.node_id) != LEFT:
            if self.transfers.pending() == 0:
                self._depart()
            else:
                self._drain()

    def _drain(self) -> None:
        """This node was removed while it held data (it was down, and came back): it is in no
        preference list, so everything it holds is misplaced. Hand it all to the current owners
        (and hints to fallbacks), then depart, so a removed node that returns loses nothing."""
        self.log.warn("node {node} was removed from the cluster while holding {keys} keys: handing them to the "
                      "current owners before it exits", node=self.node_id, keys=self.transfers.pending())

        def check() -> None:
            if self.transfers.pending() == 0 and self._draining is not None:
                self._draining.stop()
                self._draining = None
                self._depart()

        self._draining = task.LoopingCall(check)
        self._draining.clock = self.reactor
        self._draining.start(max(0.1, self.config.transfer_interval), now=False)

    @defer.inlineCallbacks
    def _depart(self) -> Any:
        """This node has handed everything off: tell every peer, then stop serving."""
        yield defer.DeferredList([self.gossip.exchange(peer) for peer in list(self.peers)])
        self.log.info("node {node} has left the cluster", node=self.node_id)
        self.on_departed()

    def cluster_info(self) -> dict[str, Any]:
        """What a joining node checks before it joins (the ``cluster_info`` peer operation)."""
        return {"cluster": self.gossip.state.cluster, "n": self.config.n, "partitions": self.config.partitions,
                "mode": self.config.mode, "members": [m.id for m in self.gossip.state.active()]}

    @defer.inlineCallbacks
    def join(self, seed: str, replace: str | None = None, dry_run: bool = False) -> Any:
        """Join the cluster of the node whose peer listener is at ``seed`` (POST /admin/join), as
        the replacement of its dead member ``replace`` if given; a dry run answers the plan only."""
        if [m.id for m in self.gossip.state.active()] != [self.node_id]:
            if not dry_run and self._joined_already(seed, replace):
                return self._joined_document(None, replace)  # asked again after it was admitted
            raise MembershipError(f"{self.node_id} is already in a cluster of {len(self.gossip.state.active())} "
                                  "members; it can join another only with an empty data dir")
        client = PeerClient("seed", seed, self.reactor, max_frame=self.config.max_frame_size, tls=self.tls,
                            any_node_will_do=True)
        client.start()
        try:
            try:
                info = yield client.call("cluster_info", None, self.config.request_timeout)
            except Exception as exc:  # noqa: BLE001 - any failure to reach the seed is the same answer
                raise MembershipError(f"seed {seed} unreachable: {exc}", 502) from exc
            mine = {"n": self.config.n, "partitions": self.config.partitions, "mode": self.config.mode}
            differing = [f"{name} {info.get(name)} there, {value} here" for name, value in mine.items()
                         if info.get(name) != value]
            if differing:
                raise MembershipError(f"cannot join the cluster at {seed}: " + "; ".join(differing), 409)
            me = self.config.member(self.node_id)
            request: list[Any] = [self.node_id, me.peer, me.http]
            # The options ask for the plan in the answer (a seed older than replacements refuses them).
            request.append({"replace": replace, "dry_run": dry_run} if replace is not None else {"dry_run": dry_run})
            answer = yield ask_to_join(client, seed, request, replace is not None, self.config.request_timeout)
            plan = answer.get("plan") if isinstance(answer, dict) else None
            if dry_run:
                return {"node": self.node_id, "dry_run": True, "plan": plan}
            self.gossip.joined(answer, seed)
        finally:
            self.reactor.callLater(0, client.stop)  # not from inside the client's own callbacks
        return self._joined_document(plan, replace)

    def _joined_already(self, seed: str, replace: str | None) -> bool:
        """Whether this node is what a join through ``seed`` (replacing ``replace``) would make it
        and still joining: in the cluster ``seed`` is a member of, ``replace``'s replacement if
        given. A join whose answer was lost, then learnt from gossip, is asked again by whoever
        could not tell it happened (``dynacheck sim`` seed 9105: 19 tries refused with 409). A
        member that has finished joining is refused as before."""
        state = self.gossip.state
        return (state.status_of(self.node_id) == JOINING and any(m.peer == seed for m in state.active())
                and (replace is None or state.replaced.get(replace) == self.node_id))

    def _joined_document(self, plan: Any, replace: str | None) -> dict[str, Any]:
        document = {"node": self.node_id, "cluster": self.gossip.state.cluster,
                    "members": [m.id for m in self.gossip.state.active()],
                    "partitions_claimed": len(self.ring.partitions_of(self.node_id))}
        if plan is not None:
            document["plan"] = plan
        if replace is not None:
            document["replaces"] = replace
        return document

    def leave(self, dry_run: bool = False) -> dict[str, Any]:
        """Start handing everything off to the other members (POST /admin/leave)."""
        plan = self.gossip.leave(dry_run)
        if dry_run:
            return {"node": self.node_id, "dry_run": True, "plan": plan}
        return {"node": self.node_id, "status": self.gossip.state.status_of(self.node_id),
                "pending_keys": self.transfers.pending(), "plan": plan}

    def remove(self, dead: str, dry_run: bool = False) -> defer.Deferred:
        """Remove the dead member ``dead`` (POST /admin/remove): its partitions go to the others;
        the plan's warnings count the hints live members hold for it."""
        plan = self.gossip.remove(dead, dry_run)

        def answer(hints: dict[str, int | None]) -> dict[str, Any]:
            document: dict[str, Any] = {"node": self.node_id, "plan": with_hint_counts(plan, hints)}
            if dry_run:
                return {**document, "dry_run": True}
            return {**document, "removed": dead, "members": [m.id for m in self.gossip.state.active()]}

        return self.gossip.hint_counts(dead).addCallback(answer)

    def _count_event(self, event: str) -> None:
        {"corrupt_record": self.metrics.corrupt_records, "read_repair": self.metrics.read_repairs,
         "read_repair_deferred": self.metrics.read_repairs_deferred, "handoff": self.metrics.handoffs,
         "oversized_key_write": self.metrics.oversized_key_writes,
         "forwarded_put": self.metrics.forwarded_puts}[event].inc()

    def _storage_failed(self, reason: str) -> None:
        """Nothing the storage holds may be served or sent any more: stop the node (the store has
        logged why and marked the damage for the next start)."""
        self.log.critical("node {node} exits with status {status}: its storage failed ({reason})",
                          node=self.node_id, status=EXIT_STORAGE_FAILED, reason=reason)
        self.reactor.callLater(0, self.on_storage_failure, reason)

    def _observe_batch(self, size: int, seconds: float) -> None:
        self.metrics.batch_size.observe(size)
        self.metrics.batch_seconds.observe(seconds)

    def startService(self) -> None:
        for pool in (self._read_pool, self._flush_pool, self._housekeeping_pool):
            pool.start()
        super().startService()
        self._maintenance = task.LoopingCall(self._maintain)
        self._maintenance.clock = self.reactor
        self._maintenance.start(MAINTENANCE_INTERVAL, now=False)
        self._pacing = task.LoopingCall(self.admission.adjust)
        self._pacing.clock = self.reactor
        self._pacing.start(1.0, now=False)
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
        for loop in (self._maintenance, self._pacing):
            if loop.running:
                loop.stop()
        # Peers route around this node before its first request to them could fail: it refuses
        # their pings, reads, writes and forwarded PUTs from now on, and says goodbye (bounded:
        # an unreachable peer learns it from the lost connection). Its own clients are served.
        self.coordinator.stopping = True
        yield self.health.goodbye(self.node_id)
        yield super().stopService()  # listeners closed: no new connections
        yield self.api.drained(self.reactor, self.config.request_timeout + 1)
        yield defer.DeferredList([peer.stop() for peer in self.peers.values()])
        yield self.store.drain()
        for pool in (self._read_pool, self._flush_pool, self._housekeeping_pool):
            pool.stop()
        self.store.close()
        self.log.info("node {node} stopped", node=self.node_id)

    def member_status(self, member_id: str) -> str:
        """``joining`` or ``leaving`` while the member is, else ``up`` or ``down`` as this node's
        failure detector sees it."""
        status = self.gossip.state.status_of(member_id)
        if status in ("joining", "leaving"):
            return status
        if member_id == self.node_id:
            return "up"
        return "up" if self.health.is_up(member_id) else "down"

    def status(self) -> dict[str, Any]:
        """The /admin/status document."""
        return {
            "node": self.node_id,
            "version": VERSION,
            "incarnation": self.engine.incarnation,
            "uptime": round(self.reactor.seconds() - self.started_at, 3),
            # The node's own wall clock (what version timestamps and logs take; skewed under the clock
            # nemesis), so the checker can see that a clock fault took effect.
            "wall_clock": round(self.wall_clock(), 3),
            "members": [
                {"id": m.id, "peer": m.peer, "http": m.http, "status": self.member_status(m.id),
                 "partitions": len(self.ring.partitions_of(m.id)),
                 "heard_ago": 0.0 if m.id == self.node_id else _rounded(self.health.heard_ago(m.id))}
                for m in self.gossip.state.active()
            ],
            "n": self.config.n, "r": self.config.r, "w": self.config.w,
            "mode": self.config.mode, "partitions": self.config.partitions,
            "engine": self.config.engine, "sync": self.config.sync,
            "storage": {"batches": self.store.batches, "updates": self.store.updates,
                        "corrupt_keys": len(self.store.corrupt_keys), "recovery": self.engine.recovery},
            "hinted_keys": self.handoff.pending(),
            "handoffs": self.handoff.delivered,
            "anti_entropy": self.anti_entropy.report(),
            "membership": self.gossip.report(),
            "transfers": self.transfers.report(),
            "tombstones": self.tombstones.report(),
            "admission": self.admission.report(),
        }

    def transfers_document(self) -> dict[str, Any]:
        """The /admin/transfers document: every member's progress as gossiped, and this node's
        outbound transfers."""
        state = self.gossip.state
        pending = state.transfers_pending()
        return {"node": self.node_id, "ring_version": state.ring_version,
                "settled": state.settled(self.gossip.reachable),
                "members": [{"id": m.id, "status": self.member_status(m.id), "pending_keys": pending.get(m.id)}
                            for m in state.active()],
                "outbound": self.transfers.report(), "fill": self.anti_entropy.fill(),
                "replaced": dict(state.replaced)}

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
