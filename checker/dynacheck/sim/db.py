"""The simulated cluster as the runner and the faults see a ``dynacheck.db.Cluster``: its members,
spares and departing nodes (the membership nemesis moves nodes between them), each node's HTTP
client on the simulated network, and the service actions (start, kill, status) on its processes."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import attrs
from twisted.internet import defer
from twisted.python.failure import Failure

from dynacheck.sim.cluster import HTTP_PORT, PEER_PORT, SimCluster
from dynacheck.sim.http import SimHttpClient
from dynactl.deploy import health_of
from dynactl.remote import HostResult
from dynamod.client import ClientError, NodeUnavailable, admin_call, join_call

#: Seconds (simulated) a synchronous step of the checker may wait for one answer.
ASK_LIMIT = 30.0


@attrs.frozen
class SimHost:
    """What the faults read of a host: its name and addresses."""

    name: str
    http: str
    peer: str


def settle(sim: SimCluster, answer: defer.Deferred, address: str) -> Any:
    """Run the world until ``answer`` fires; its result, or its error raised."""
    results: list[Any] = []
    answer.addBoth(results.append)
    sim.scheduler.run_until(sim.scheduler.now + ASK_LIMIT, lambda: bool(results))
    if not results:
        raise NodeUnavailable(f"{address}: no answer in {ASK_LIMIT:g} simulated seconds")
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]


class SimNodeClient:
    """``DynamoClient``'s methods for the runner's and the faults' sequential steps (convergence
    polls, status snapshots, membership changes): each call runs the world until its answer."""

    def __init__(self, sim: SimCluster, http: SimHttpClient):
        self.sim, self.http = sim, http

    def _ask(self, answer: defer.Deferred) -> Any:
        return settle(self.sim, answer, self.http.address)

    def replica(self, key: str) -> Any:
        return self._ask(self.http.replica(key))

    def status(self) -> Any:
        return self._ask(self.http.status())

    def ring(self) -> Any:
        return self._ask(self.http.ring())

    def join(self, seed_peer: str, replace: str | None = None, dry_run: bool = False) -> Any:
        return self._ask(self.http.perform(join_call(seed_peer, replace, dry_run)))

    def leave(self, dry_run: bool = False) -> Any:
        return self._ask(self.http.perform(admin_call("POST", "/admin/leave", {"dry_run": True} if dry_run else {})))

    def remove_node(self, node: str, dry_run: bool = False) -> Any:
        body: dict[str, Any] = {"node": node, **({"dry_run": True} if dry_run else {})}
        return self._ask(self.http.perform(admin_call("POST", "/admin/remove", body)))

    def transfers(self) -> Any:
        return self._ask(self.http.perform(admin_call("GET", "/admin/transfers")))

    def close(self) -> None:
        pass


class SimDb:
    """Members, spares and departing nodes of a simulated cluster (``dynacheck.db.Cluster``'s lists)."""

    def __init__(self, sim: SimCluster, timeout: float):
        self.sim, self.timeout = sim, timeout
        self.members = list(sim.founders)
        self.spares = [node for node in sim.ids if node not in sim.founders]
        self.departing: list[str] = []
        self.membership_version = 0
        self.credentials = None
        self.local_dir = None

    @property
    def ids(self) -> list[str]:
        return list(self.members)

    @property
    def spare_ids(self) -> list[str]:
        return list(self.spares)

    def host(self, node: str) -> SimHost:
        address = self.sim.hosts[node]
        return SimHost(node, f"{address}:{HTTP_PORT}", f"{address}:{PEER_PORT}")

    def addresses(self) -> dict[str, str]:
        return {node: self.host(node).http for node in self.members}

    def http(self, node: str, timeout: float | None = None) -> SimHttpClient:
        return SimHttpClient(self.sim.client_reactor, self.host(node).http, timeout or self.timeout)

    def client(self, node: str, timeout: float | None = None) -> SimNodeClient:
        return SimNodeClient(self.sim, self.http(node, timeout))

    @contextlib.contextmanager
    def clients(self, timeout: float) -> Iterator[dict[str, SimNodeClient]]:
        yield {node: self.client(node, timeout) for node in self.members}

    def statuses(self, timeout: float = 0.0, nodes: list[str] | None = None) -> dict[str, dict[str, Any] | str]:
        """Each node's status document, read in-process (what the nemesis's probes see)."""
        return {node: (process.status() if (process := self.sim.nodes[node]) is not None else "down")
                for node in (nodes or self.members)}

    # -- processes --------------------------------------------------------------------------------

    def service(self, action: str, nodes: list[str] | None = None) -> dict[str, HostResult]:
        """``start``, ``kill`` or ``status`` (ok while it runs) of the members, or of ``nodes``."""
        results = {}
        for node in nodes if nodes is not None else self.members:
            if action == "start":
                self.sim.start(node)
            elif action == "kill":
                self.sim.kill(node)
            elif action == "status" and not self.sim.is_running(node):
                results[node] = HostResult(host=node, ok=False, error="not running")
                continue
            results[node] = HostResult(host=node, ok=True)
        return results

    def make_spare(self, node: str) -> dict[str, HostResult]:
        self.sim.make_spare(node)
        return {node: HostResult(host=node, ok=True)}

    # -- membership -------------------------------------------------------------------------------

    def admit(self, node: str, position: int | None = None) -> None:
        members = [m for m in self.members if m != node]
        members.insert(len(members) if position is None else min(position, len(members)), node)
        self.members = members
        self.spares = [s for s in self.spares if s != node]
        self.departing = [d for d in self.departing if d != node]
        self.membership_version += 1

    def depart(self, node: str) -> int:
        position = self.members.index(node)
        self.members = [m for m in self.members if m != node]
        self.departing = [*self.departing, node]
        self.membership_version += 1
        return position

    def restore(self, node: str, position: int) -> None:
        self.departing = [d for d in self.departing if d != node]
        members = [m for m in self.members if m != node]
        members.insert(min(position, len(members)), node)
        self.members = members
        self.membership_version += 1

    def retire(self, node: str) -> None:
        self.members = [m for m in self.members if m != node]
        self.departing = [d for d in self.departing if d != node]
        self.spares = [*[s for s in self.spares if s != node], node]
        self.membership_version += 1

    def health(self, host: SimHost, expected: list[str]) -> tuple[bool, str]:
        """``dynactl.deploy.cluster_health`` over the simulated network."""
        client = self.client(host.name, 3.0)
        try:
            status, transfers = client.status(), client.transfers()
        except (ClientError, NodeUnavailable) as exc:
            return False, f"{host.name} does not answer ({exc})"
        return health_of(host.name, status, transfers, expected)
