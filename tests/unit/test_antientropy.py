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


def test_coverage_counts_each_partition_peer_pair_once_in_pairs_total_rounds():
    network, clock = make_cluster(size=3, partitions=8)
    services = with_anti_entropy(network, clock)
    service = services["n1"]
    # every node replicates every partition at N=3 of 3 nodes: 8 partitions x 2 other replicas
    assert service.report()["coverage"] == {"pairs_exchanged": 0, "pairs_total": 16, "sweeps": 0,
                                            "last_sweep_began_ago": None}
    for round_number in range(16):
        service.round()
        assert service.report()["coverage"]["pairs_exchanged"] == round_number + 1  # no pair twice
    assert service.report()["failed_exchanges"] == 0


def test_a_sweep_completes_when_every_pair_was_exchanged_once_more_and_a_down_peer_holds_it_back():
    network, clock = make_cluster(size=3, partitions=4)
    services = with_anti_entropy(network, clock)
    service = services["n1"]
    total = service.report()["coverage"]["pairs_total"]
    for _ in range(total - 1):
        service.round()
    assert service.report()["coverage"]["sweeps"] == 0
    clock.advance(5)
    service.round()
    assert service.report()["coverage"]["sweeps"] == 1
    assert service.report()["coverage"]["last_sweep_began_ago"] == 5.0  # it began at the service's start
    network.down.add("n2")  # the next sweep cannot finish without n2's pairs
    for _ in range(3 * total):
        service.round()
    assert service.report()["coverage"]["sweeps"] == 1
    network.down.clear()
    clock.advance(2)
    for _ in range(total // 2):  # only n2's pairs were left in the sweep under way
        service.round()
    assert service.report()["coverage"]["sweeps"] == 2
    assert service.report()["coverage"]["last_sweep_began_ago"] == 2.0  # when the first one ended


def test_coverage_rotation_skips_a_peer_that_is_down_and_resets_on_a_ring_change():
    network, clock = make_cluster(size=4, partitions=8)
    services = with_anti_entropy(network, clock)
    service = services["n1"]
    total = service.report()["coverage"]["pairs_total"]
    peers_of = {}
    for _partition, peer in service.pairs():
        peers_of.setdefault(peer, 0)
        peers_of[peer] += 1
    network.down.add("n2")
    for _ in range(total):
        service.round()
    up_pairs = total - peers_of["n2"]
    assert service.report()["coverage"] == {"pairs_exchanged": up_pairs, "pairs_total": total, "sweeps": 0,
                                            "last_sweep_began_ago": None}
    assert service.report()["failed_exchanges"] == 0  # a peer that is down is skipped, not tried
    network.down.clear()
    for _ in range(peers_of["n2"]):
        service.round()
    assert service.report()["coverage"]["pairs_exchanged"] == total
    ring = network.nodes["n1"].ring.release("n4", 3)
    for coordinator in network.nodes.values():
        coordinator.ring = ring
    coverage = service.report()["coverage"]
    assert coverage["pairs_exchanged"] == 0 and coverage["pairs_total"] == len(service.pairs())


def test_a_record_that_does_not_decode_is_replaced_by_the_peers_version_and_never_sent():
    network, clock = make_cluster(size=3, partitions=4)
    services = with_anti_entropy(network, clock)
    network.down.add("n2")
    fired(network.nodes["n1"].put(b"k", b"good", CausalContext(), 2))
    fired(network.nodes["n1"].put(b"j", b"also good", CausalContext(), 2))
    network.down.clear()
    network.nodes["n2"].store.engine.data[b"k"] = b"\xc1 damaged"  # not in n2's trees
    network.nodes["n1"].store.engine.data[b"j"] = b"\xc1 damaged"  # in n1's trees, unreadable now
    for _ in range(2 * 4):
        services["n2"].round()
    assert live_values(network.nodes["n2"].store.engine.read(b"k").siblings) == [b"good"]
    assert network.nodes["n2"].store.corrupt_keys == set()
    assert network.nodes["n1"].store.corrupt_keys == {b"j"}  # noted when asked for it, never sent
    assert live_values(network.nodes["n2"].store.engine.read(b"j").siblings) == [b"also good"]  # from n3
    assert services["n2"].report()["failed_exchanges"] == 0
