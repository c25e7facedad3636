"""Real dynamod processes on loopback, started and stopped through dynactl's LocalCluster."""

from __future__ import annotations

import random
import signal

import pytest

from dynactl.local import LocalCluster, port_is_free
from dynamod.client import DynamoClient


def free_base_port(count: int) -> int:
    """A base port whose HTTP (base+i) and peer (base-1000+i) ports are all free, below the
    kernel's ephemeral range (32768-60999 here): a port in it can be taken by any outgoing
    connection between this check and the node's bind ("Address already in use", seen in CI)."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(21000, 32000, 10)
        ports = [base + i for i in range(1, count + 1)] + [base - 1000 + i for i in range(1, count + 1)]
        if all(port_is_free(p) for p in ports):
            return base
    raise RuntimeError("no free ports found")


class RunningCluster:
    """A started local cluster plus clients for its nodes."""

    def __init__(self, cluster: LocalCluster):
        self.cluster = cluster

    def client(self, node_id: str, timeout: float = 10.0) -> DynamoClient:
        """A client of the node, with the cluster's credentials when it is secured."""
        return self.cluster.client(self.cluster.node(node_id), timeout=timeout)

    def stop(self, node_id: str) -> None:
        self.cluster.stop(self.cluster.node(node_id))

    def kill(self, node_id: str) -> None:
        self.cluster.kill(self.cluster.node(node_id))

    def start(self, node_id: str) -> None:
        node = self.cluster.node(node_id)
        self.cluster.start(node)
        self.cluster.wait_until_serving([node])

    def add(self) -> str:
        """Start one more node configured alone (it has not joined yet); returns its id."""
        node = self.cluster.add_node()
        self.cluster.start(node)
        self.cluster.wait_until_serving([node])
        return node.id

    def peer(self, node_id: str) -> str:
        return self.cluster.node(node_id).peer

    def running(self, node_id: str) -> bool:
        return self.cluster.running(self.cluster.node(node_id))

    @property
    def ids(self) -> list[str]:
        return [n.id for n in self.cluster.nodes]


@pytest.fixture
def make_cluster(tmp_path):
    """Start a local cluster: ``make_cluster(nodes=3, tls=False, **settings)`` (``tls``: secured, see
    LocalCluster.create); everything is stopped after."""
    started: list[LocalCluster] = []

    def make(nodes: int = 3, tls: bool = False, **settings) -> RunningCluster:
        cluster = LocalCluster(str(tmp_path / f"cluster{len(started)}"))
        options = {"n": 3, "r": 2, "w": 2, "partitions": 32, "mode": "vclock", "sync": True,
                   "request_timeout": 2.0, **settings}
        cluster.create(nodes, base_port=free_base_port(nodes), settings=options, tls=tls)
        started.append(cluster)
        for node in cluster.nodes:
            cluster.start(node)
        cluster.wait_until_serving(cluster.nodes)
        return RunningCluster(cluster)

    yield make
    for cluster in started:
        for node in cluster.nodes:
            if cluster.running(node):
                cluster.signal(node, signal.SIGKILL)
                cluster.kill(node)
