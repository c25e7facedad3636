"""Anti-entropy in the in-process cluster: replicas that missed writes catch up with no reads."""

from __future__ import annotations

from dynamod.antientropy import AntiEntropyService
from dynamod.core.versions import CausalContext, live_values
from tests.sim import fired, make_cluster


def with_anti_entropy(network, clock):
    return {node_id: AntiEntropyService(coordinator, lambda peer: peer not in network.down, clock, 1.0, depth=6)
            for node_id, coordinator in network.nodes.items()}


def test_a_replica_that_missed_writes_is_filled_in_without_reads():
    network, clock = make_cluster(size=3, partitions=8)
    services = with_anti_entropy(network, clock)
    network.down.add("n3")
    for i in range(40):
        fired(network.nodes["n1"].put(b"k%d" % i, b"v%d" % i, CausalContext(), 2))
    network.down.clear()
    assert all(network.nodes["n3"].store.engine.read(b"k%d" % i) is None for i in range(40))
    reads_before = [op for _, _, op in network.sent].count("get")
    for _ in range(3 * 8):
        services["n3"].round()
    for i in range(40):
        assert live_values(network.nodes["n3"].store.engine.read(b"k%d" % i).siblings) == [b"v%d" % i]
    assert [op for _, _, op in network.sent].count("get") == reads_before
    report = services["n3"].report()
    assert report["keys_received"] == 40 and report["failed_exchanges"] == 0
    # once in sync, exchanges find nothing to do
    before = services["n3"].report()["keys_received"]
    for _ in range(8):
        services["n1"].round()
    assert services["n3"].report()["keys_received"] == before


def test_an_exchange_sends_local_versions_the_peer_lacks():
    network, clock = make_cluster(size=3, partitions=4)
    services = with_anti_entropy(network, clock)
    network.down.add("n2")
    fired(network.nodes["n1"].put(b"only-here", b"x", CausalContext(), 2))
    network.down.clear()
    for _ in range(2 * 4):
        services["n1"].round()
    assert live_values(network.nodes["n2"].store.engine.read(b"only-here").siblings) == [b"x"]
