"""Partitioning: Q equal partitions, preference lists, minimal-movement claims (Dynamo §4.2, §6.2)."""

from __future__ import annotations

from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from dynamod.core.ring import Ring, partition_of

members_st = st.lists(st.text("abcdefgh", min_size=1, max_size=4), min_size=1, max_size=12, unique=True)
partitions_st = st.sampled_from([8, 16, 32, 64, 128])


def grown_ring(members, partitions, n):
    """A ring built the way a cluster grows: the first node, then one claim per join."""
    ring = Ring.initial(members[:1], partitions)
    for member in members[1:]:
        ring = ring.claim(member, n)
    return ring


@given(st.binary(max_size=64), partitions_st)
def test_partition_is_in_range_and_deterministic(key, partitions):
    assert 0 <= partition_of(key, partitions) < partitions
    assert partition_of(key, partitions) == partition_of(key, partitions)


def test_partitions_are_equal_slices_of_the_hash_space():
    counts = Counter(partition_of(b"key-%d" % i, 8) for i in range(40_000))
    assert set(counts) == set(range(8))
    assert max(counts.values()) / min(counts.values()) < 1.1


@given(members_st, partitions_st, st.integers(1, 5), st.binary(max_size=32), st.booleans())
def test_every_key_maps_to_n_distinct_nodes(members, partitions, n, key, grown):
    if len(members) > partitions:
        return
    ring = grown_ring(members, partitions, n) if grown else Ring.initial(members, partitions)
    preference = ring.preference_list(key, n)
    assert len(preference) == len(set(preference)) == min(n, len(members))
    assert set(preference) <= set(members)


@given(members_st, partitions_st, st.integers(1, 5))
def test_ownership_is_within_one_partition_of_even(members, partitions, n):
    if len(members) > partitions:
        return
    for ring in (Ring.initial(members, partitions), grown_ring(members, partitions, n)):
        counts = Counter(ring.ownership)
        assert set(counts) == set(members)
        assert max(counts.values()) - min(counts.values()) <= 1


@given(members_st, partitions_st, st.integers(1, 5), st.text("xyz", min_size=1, max_size=3))
def test_adding_a_node_moves_only_the_partitions_it_takes(members, partitions, n, newcomer):
    if len(members) + 1 > partitions or newcomer in members:
        return
    before = grown_ring(members, partitions, n)
    after = before.claim(newcomer, n)
    moved = [p for p in range(partitions) if before.ownership[p] != after.ownership[p]]
    assert all(after.ownership[p] == newcomer for p in moved)
    assert len(moved) == partitions // (len(members) + 1)


def test_initial_ring_keeps_preference_lists_on_distinct_consecutive_owners():
    ring = Ring.initial(["n1", "n2", "n3", "n4", "n5"], 64)
    for p in range(64):
        assert ring.preference_list_for_partition(p, 3) == tuple(ring.ownership[(p + i) % 64] for i in range(3))


def test_claim_spreads_the_newcomer_so_its_preference_lists_stay_distinct():
    ring = Ring.initial(["n1", "n2", "n3", "n4", "n5"], 64).claim("n6", 3)
    taken = ring.partitions_of("n6")
    gaps = [(b - a) % 64 for a, b in zip(taken, taken[1:] + taken[:1], strict=True)]
    assert min(gaps) >= 3


def test_claim_of_an_existing_member_changes_nothing():
    ring = Ring.initial(["n1", "n2"], 8)
    assert ring.claim("n1", 3) is ring


@given(members_st, st.integers(1, 5), st.binary(max_size=16), st.data())
def test_sloppy_targets_replace_each_down_owner_with_a_distinct_live_fallback(members, n, key, data):
    if len(members) > 32:
        return
    ring = Ring.initial(members, 32)
    down = set(data.draw(st.lists(st.sampled_from(members), unique=True)))
    targets = ring.sloppy_targets(key, n, lambda node: node not in down)
    nodes = [node for node, _ in targets]
    owners = ring.preference_list(key, n)
    assert len(nodes) == len(set(nodes)) and not set(nodes) & down
    assert [node for node, hint in targets if hint is None] == [o for o in owners if o not in down]
    hints = [hint for _, hint in targets if hint is not None]
    assert len(hints) == len(set(hints)) and set(hints) <= set(owners) & down
    alive = len(set(members) - down)
    assert len(targets) == min(n, alive, len(members))
    assert all(node not in owners for node, hint in targets if hint is not None)


def test_walk_lists_every_member_once_starting_at_the_partition_owner():
    ring = Ring.initial(["a", "b", "c", "d"], 8)
    assert ring.walk(1) == ("b", "c", "d", "a")


@given(members_st, partitions_st, st.integers(1, 5), st.data())
def test_a_leaving_node_moves_only_its_own_partitions_and_balance_holds(members, partitions, n, data):
    if len(members) < 2 or len(members) > partitions:
        return
    before = grown_ring(members, partitions, n)
    leaving = data.draw(st.sampled_from(members))
    after = before.release(leaving, n)
    moved = [p for p in range(partitions) if before.ownership[p] != after.ownership[p]]
    assert moved == before.partitions_of(leaving)
    counts = Counter(after.ownership)
    assert leaving not in counts and set(counts) == set(members) - {leaving}
    assert max(counts.values()) - min(counts.values()) <= 1


def test_the_last_member_cannot_leave():
    import pytest

    with pytest.raises(ValueError, match="last member"):
        Ring.initial(["a"], 8).release("a", 3)
