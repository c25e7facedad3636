"""A whole dynamod cluster in one process: real ``Node``s (the daemon's own wiring: coordinator,
storage, gossip, handoff, anti-entropy, transfers, tombstones, admission control, failure
detector, HTTP and peer servers) on ``HostReactor``s of one simulated world, each over a
``SimEngine``, each with a wall clock the clock nemesis can set off.

What the faults do to a node: ``kill`` ends its process (kill -9: its timers and connections go,
its writes not flushed are lost with the process's log buffer) and ``start`` runs a new process
on the same disk; ``pause`` and ``resume`` are SIGSTOP and SIGCONT; ``lose_disk`` empties its disk
while it is down; ``corrupt`` flips bits of one record while it is down.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import msgpack

from dynacheck.sim.disk import SimEngine, SimWorkers
from dynacheck.sim.world import HostReactor, Network, Scheduler
from dynamod.config import NodeConfig, build_config
from dynamod.core.membership import ClusterState, state_from_wire, state_to_wire
from dynamod.node import Node

#: The wall clock's reading at simulated time 0 (a plausible date: version timestamps look real).
EPOCH = 1_800_000_000.0
HTTP_PORT, PEER_PORT = 8000, 7000
#: The checker's host (it is never partitioned from the nodes: Jepsen's control node).
CLIENT_HOST = "10.0.9.1"
#: Mean simulated time of a read, a flush (an fsync) and a checkpoint on the simulated disk.
READ_SECONDS, FLUSH_SECONDS, HOUSEKEEPING_SECONDS = 0.0002, 0.004, 0.02


def host_of(index: int) -> str:
    return f"10.0.0.{index}"


class SimStateFile:
    """The node's cluster-state file on its simulated disk (``dynamod.gossip.StateFile``'s contract:
    a save is durable when it returns; the state goes with the disk)."""

    def __init__(self, node: str):
        self.path = f"/sim/{node}/cluster-state.msgpack"
        self._saved: bytes | None = None

    def load(self, partitions: int) -> ClusterState | None:
        if self._saved is None:
            return None
        return state_from_wire(msgpack.unpackb(self._saved, raw=False), partitions)

    def save(self, state: ClusterState) -> None:
        self._saved = msgpack.packb(state_to_wire(state), use_bin_type=True)


class SimCluster:
    """``size`` members ``n1..nSIZE`` and ``spares`` more nodes (which start alone and may join),
    with ``settings`` (node.toml keys), every random stream from ``seed``."""

    def __init__(self, size: int, settings: dict[str, Any], seed: int, on_error: Callable[[str, BaseException], None],
                 spares: int = 0):
        self.rng = random.Random(f"{seed}-world")
        self.scheduler = Scheduler(on_error=lambda exc: on_error(self.current_host(), exc))
        self.network = Network(self.scheduler, random.Random(f"{seed}-network"))
        self.ids = [f"n{i}" for i in range(1, size + spares + 1)]
        self.founders = self.ids[:size]
        #: Nodes whose configuration names themselves alone (spares: they start alone and join).
        self.alone = set(self.ids[size:])
        self.hosts = {node: host_of(i) for i, node in enumerate(self.ids, start=1)}
        self.network.nodes = set(self.hosts.values())
        self.settings = settings
        self.seed = seed
        self.engines = {node: SimEngine(self._incarnation()) for node in self.ids}
        self.states = {node: SimStateFile(node) for node in self.ids}
        self.offsets: dict[str, float] = {node: 0.0 for node in self.ids}
        self.reactors: dict[str, HostReactor] = {}
        self.nodes: dict[str, Node | None] = {node: None for node in self.ids}
        self.client_reactor = HostReactor(self.network, CLIENT_HOST)
        self.restarts = 0

    def _incarnation(self) -> str:
        return f"{self.rng.getrandbits(64):016x}"

    def current_host(self) -> str:
        return self.network.current

    def config(self, node: str) -> NodeConfig:
        members = [{"id": other, "peer": f"{self.hosts[other]}:{PEER_PORT}", "http": f"{self.hosts[other]}:{HTTP_PORT}"}
                   for other in ([node] if node in self.alone else self.founders)]
        return build_config({**self.settings, "node_id": node, "engine": "memory", "data_dir": f"/sim/{node}",
                             "peer": f"{self.hosts[node]}:{PEER_PORT}", "http": f"{self.hosts[node]}:{HTTP_PORT}",
                             "members": members})

    def wall_clock(self, node: str) -> Callable[[], float]:
        return lambda: EPOCH + self.scheduler.now + self.offsets[node]

    # -- processes --------------------------------------------------------------------------------

    def start(self, node: str) -> None:
        """Run a node process on its disk (a no-op while one runs)."""
        if self.nodes[node] is not None:
            return
        reactor = self.reactors[node] = HostReactor(self.network, self.hosts[node])
        rng = random.Random(f"{self.seed}-{node}-{self.restarts}")
        self.restarts += 1
        workers = {"dynamod-read": READ_SECONDS, "dynamod-flush": FLUSH_SECONDS,
                   "dynamod-housekeeping": HOUSEKEEPING_SECONDS}
        previous, self.network.current = self.network.current, self.hosts[node]
        try:
            process = Node(self.config(node), reactor, self.engines[node], wall_clock=self.wall_clock(node), rng=rng,
                           workers=lambda count, name: SimWorkers(reactor, count, rng, workers[name]),
                           state_file=self.states[node])
            process.on_storage_failure = lambda reason: self.kill(node)
            process.on_departed = lambda: self.kill(node)
            process.startService()
        finally:
            self.network.current = previous
        self.nodes[node] = process

    def kill(self, node: str) -> int:
        """kill -9 the node's process; returns how many unflushed writes died with it."""
        if self.nodes[node] is None:
            return 0
        self.reactors[node].kill()
        self.nodes[node] = None
        return self.engines[node].crash()

    def pause(self, node: str) -> None:
        if self.nodes[node] is not None:
            self.reactors[node].pause()

    def resume(self, node: str) -> None:
        if node in self.reactors:
            self.reactors[node].resume()

    def lose_disk(self, node: str) -> None:
        """An empty disk in place of the node's (it must be down): a new incarnation starts on it."""
        self.engines[node] = SimEngine(self._incarnation())
        self.states[node] = SimStateFile(node)

    def make_spare(self, node: str) -> None:
        """Stop the node and empty its disk: it starts alone next time (and may join)."""
        self.kill(node)
        self.lose_disk(node)
        self.alone.add(node)

    def is_running(self, node: str) -> bool:
        return self.nodes[node] is not None

    def stop_all(self) -> None:
        """End every process (the run is over: nothing is stopped cleanly, nothing needs to be)."""
        for node in self.ids:
            if self.nodes[node] is not None:
                self.reactors[node].kill()
                self.nodes[node] = None
