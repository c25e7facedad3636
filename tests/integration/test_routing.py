"""Client-driven coordination on a real 5-node cluster (N=3): a routed client's writes are never
forwarded, a node's own clients' are."""

from __future__ import annotations

import pytest

from dynamod.routing import RoutedClient, key_bytes

pytestmark = pytest.mark.integration


def forwarded(cluster, nodes=None) -> int:
    """PUTs forwarded by these nodes (default: all) so far."""
    total = 0
    for node in nodes or cluster.ids:
        for line in cluster.client(node).metrics().splitlines():
            if line.startswith("dynamod_forwarded_puts_total "):
                total += int(float(line.split()[1]))
    return total


def test_routed_writes_are_never_forwarded_and_survive_a_dead_replica(make_cluster):
    cluster = make_cluster(nodes=5)
    addresses = [cluster.cluster.node(node).http for node in cluster.ids]
    keys = [f"routed-{i}" for i in range(40)]
    direct = cluster.client("n1")
    for key in keys:
        direct.put(key, b"direct")
    forwards_by_one_node = forwarded(cluster)
    assert forwards_by_one_node > 0  # n1 holds 3 of 5 nodes' replicas: ~40% of keys are forwarded

    routed = RoutedClient(addresses[:1], timeout=5)  # one seed: it learns the rest from the ring
    for key in keys:
        routed.put(key, b"routed", context=routed.get(key).context)
    assert forwarded(cluster) == forwards_by_one_node
    assert sum(routed.sent.values()) == 2 * len(keys)
    assert sorted(routed.sent) == cluster.ids  # every node coordinated some keys
    first = {key: routed.view.candidates(key_bytes(key))[0] for key in keys}

    live = [node for node in cluster.ids if node != "n2"]
    before = forwarded(cluster, live)
    cluster.kill("n2")  # the keys it came first for: it refuses, the next replica takes the request
    assert any(node == "n2" for node in first.values())
    for key in keys:
        routed.put(key, b"after", context=routed.get(key).context)
    for key in keys:
        assert routed.get(key).siblings == [b"after"]
    assert forwarded(cluster, live) == before
    assert "n2" not in routed.sent or routed.sent["n2"] == sum(2 for node in first.values() if node == "n2")
    routed.close()
