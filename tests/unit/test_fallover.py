"""Fallover of a coordinator's requests (issue 13): a target that cannot be reached, or that is
stopping, is replaced at once by the next node on the ring carrying its hint, while this node's
failure detector still thinks it up; reads and writes still count R or W distinct nodes."""

from __future__ import annotations

from dynamod.core.quorum import Outcome
from dynamod.core.ring import partition_of
from dynamod.core.versions import CausalContext, live_values
from tests.sim import fired, make_cluster


def put(network, node, key, value, w):
    return fired(network.nodes[node].put(key, value, CausalContext(), w)).result


def get(network, node, key, r):
    return fired(network.nodes[node].get(key, r))


def layout(network, key):
    """The key's owners, and the other nodes in the key's ring order (the spares)."""
    ring = network.nodes["n1"].ring
    owners = network.nodes["n1"].replicas(key)
    return owners, [n for n in ring.walk(partition_of(key, ring.partitions)) if n not in owners]


def unreachable(network, node):
    """``node`` is gone but nobody's detector knows yet (``is_up`` of the sim still says up)."""
    network.partition({node}, set(network.nodes) - {node})


def held(network, node, key):
    return network.nodes[node].store.engine.read(key)


def test_a_put_whose_owner_cannot_be_reached_is_taken_by_the_next_node_with_the_owners_hint():
    network, _ = make_cluster(size=5)
    key = b"k"
    owners, spares = layout(network, key)
    unreachable(network, owners[2])
    assert network.nodes[owners[0]].targets(key) == dict.fromkeys(owners)  # the detector is late
    result = put(network, owners[0], key, b"v", w=3)
    assert result.outcome is Outcome.OK and result.acks == 3 and result.errors == {}
    assert held(network, spares[0], key).hints == {owners[2]}
    assert network.nodes[spares[0]].store.hinted == {key: frozenset({owners[2]})}
    assert held(network, owners[2], key) is None


def test_a_non_owner_forwards_past_an_unreachable_first_owner_and_the_coordinator_falls_over():
    network, _ = make_cluster(size=5)
    key = b"k"
    owners, spares = layout(network, key)
    unreachable(network, owners[0])  # the forward's first candidate, and a replica of the PUT
    result = put(network, spares[-1], key, b"v", w=3)
    assert result.outcome is Outcome.OK and result.acks == 3
    assert held(network, spares[0], key).hints == {owners[0]}


def test_a_stopping_owner_refuses_before_stamping_and_its_share_goes_to_a_fallback():
    network, _ = make_cluster(size=5)
    key = b"k"
    owners, spares = layout(network, key)
    network.nodes[owners[0]].stopping = True
    via_outsider = put(network, spares[-1], key, b"one", w=3)  # forwarded: owners[0] refuses it
    via_owner = put(network, owners[1], key, b"two", w=3)  # a replica write: owners[0] refuses it
    assert via_outsider.outcome is Outcome.OK and via_owner.outcome is Outcome.OK
    assert held(network, owners[0], key) is None
    assert sorted(live_values(held(network, spares[0], key).siblings)) == [b"one", b"two"]
    assert held(network, spares[0], key).hints == {owners[0]}
    refused = [op for source, target, op in network.sent if target == owners[0]]
    assert sorted(set(refused)) == ["coordinate_put", "put"]


def test_two_failed_owners_are_replaced_by_two_distinct_nodes():
    network, _ = make_cluster(size=5)
    key = b"k"
    owners, spares = layout(network, key)
    unreachable(network, owners[1])
    unreachable(network, owners[2])
    result = put(network, owners[0], key, b"v", w=3)
    assert result.outcome is Outcome.OK and result.acks == 3
    assert {frozenset(held(network, spare, key).hints) for spare in spares} == {
        frozenset({owners[1]}), frozenset({owners[2]})}


def test_with_no_node_to_fall_over_to_the_put_fails_with_the_owners_reason():
    network, _ = make_cluster(size=3)
    unreachable(network, "n3")
    result = put(network, "n1", b"k", b"v", w=3)
    assert result.outcome is Outcome.FAILED and result.needed == 3
    assert result.errors["n3"].startswith("PeerUnavailable: n3 unreachable")
    assert put(network, "n1", b"k", b"v", w=2).outcome is Outcome.OK


def test_when_the_fallback_fails_too_both_reasons_are_reported_and_w_is_not_reached():
    network, _ = make_cluster(size=4)
    key = b"k"
    owners, [spare] = layout(network, key)
    network.cut |= {frozenset((owners[0], owners[2])), frozenset((owners[0], spare))}
    result = put(network, owners[0], key, b"v", w=3)
    assert result.outcome is Outcome.FAILED and result.acks == 2
    assert result.errors[owners[2]].startswith(f"FalloverFailed: {owners[2]}: PeerUnavailable")
    assert f"then {spare}: PeerUnavailable" in result.errors[owners[2]]


def test_a_silent_owner_is_not_fallen_over_from_its_timeout_is_the_requests_deadline():
    network, clock = make_cluster(size=5, timeout=1.0)
    key = b"k"
    owners, spares = layout(network, key)
    network.silent.add(owners[2])
    answer = network.nodes[owners[0]].put(key, b"v", CausalContext(), 3)
    clock.advance(1.0)
    result = fired(answer).result
    assert result.outcome is Outcome.FAILED and result.acks == 2
    assert all(held(network, spare, key) is None for spare in spares)


def test_a_read_whose_replica_cannot_be_reached_asks_the_next_node_and_counts_distinct_answers():
    network, _ = make_cluster(size=5)
    key = b"k"
    owners, spares = layout(network, key)
    assert put(network, owners[0], key, b"v", w=3).outcome is Outcome.OK
    unreachable(network, owners[2])
    result = get(network, owners[0], key, r=3)
    assert result.outcome is Outcome.OK and result.acks == 3 and live_values(result.siblings) == [b"v"]
    # The fallback answered empty and was repaired with the owner's hint, as a write would have been.
    assert held(network, spares[0], key).hints == {owners[2]}


def test_a_read_never_claims_r_answers_it_did_not_get():
    network, _ = make_cluster(size=4)
    key = b"k"
    owners, [spare] = layout(network, key)
    assert put(network, owners[0], key, b"v", w=3).outcome is Outcome.OK
    network.cut |= {frozenset((owners[0], owners[2])), frozenset((owners[0], spare))}
    result = get(network, owners[0], key, r=3)
    assert result.outcome is Outcome.FAILED and result.acks == 2 and result.siblings == ()
    assert live_values(get(network, owners[0], key, r=2).siblings) == [b"v"]


def test_owners_the_detector_wrongly_suspects_still_get_the_request_when_no_fallback_is_up():
    """Three nodes, one coordinator whose detector suspects both other owners (a slow link, a
    peer just resumed): with no node left to stand in, it asks the owners themselves, and the
    live ones make the quorum, for a PUT and for a GET."""
    network, _ = make_cluster(size=3)
    key = b"k"
    owners, _ = layout(network, key)
    coordinator = network.nodes[owners[0]]
    coordinator.is_up = lambda node: False
    assert coordinator.targets(key) == {owners[0]: None}
    result = put(network, owners[0], key, b"v", w=3)
    assert result.outcome is Outcome.OK and result.acks == 3 and result.errors == {}
    assert all(held(network, owner, key).hints == set() for owner in owners)
    read = get(network, owners[0], key, r=3)
    assert read.outcome is Outcome.OK and live_values(read.siblings) == [b"v"]


def test_a_suspected_owner_that_is_really_down_fails_the_request_it_was_needed_for():
    network, clock = make_cluster(size=3)
    key = b"k"
    owners, _ = layout(network, key)
    network.down |= set(owners[1:])  # refused at once, and every detector knows
    result = put(network, owners[0], key, b"v", w=2)
    assert result.outcome is Outcome.FAILED and result.acks == 1
    assert set(result.errors) == set(owners[1:]) and all("unreachable" in e for e in result.errors.values())
    network.down.clear()
    network.silent |= set(owners[1:])  # suspected, and silent: the answer waits for the deadline
    coordinator = network.nodes[owners[0]]
    coordinator.is_up = lambda node: False
    pending = coordinator.put(key, b"w", CausalContext(), 2)
    assert not pending.called
    clock.advance(1.0)
    assert fired(pending).result.outcome is Outcome.FAILED


def test_read_repair_to_a_replica_that_left_meanwhile_is_skipped_without_an_unhandled_error():
    """A GET's read repair runs once every replica has answered; a stale replica that left the
    cluster before the last answer (its peer client is gone) is no longer asked, and nothing
    raises (``dynacheck sim`` seed 6147: a KeyError in a Deferred, logged as unhandled)."""
    import gc

    from twisted.logger import globalLogPublisher

    network, clock = make_cluster(size=3)
    key = b"k"
    owners, _ = layout(network, key)
    coordinator = network.nodes[owners[0]]
    network.down.add(owners[1])
    assert put(network, owners[0], key, b"v", w=2).outcome is Outcome.OK  # the second owner misses it
    network.down.clear()
    network.silent.add(owners[2])  # the last answer comes at the deadline
    logged: list[dict] = []
    globalLogPublisher.addObserver(logged.append)
    try:
        read = coordinator.get(key, r=2)
        assert fired(read).outcome is Outcome.OK
        del coordinator.peers[owners[1]]  # it left: the node drops its peer client at once
        clock.advance(1.0)  # the silent owner times out: every replica has answered, repair runs
        del read
        gc.collect()
    finally:
        globalLogPublisher.removeObserver(logged.append)
    assert [event for event in logged if "log_failure" in event] == []
    assert held(network, owners[1], key) is None
