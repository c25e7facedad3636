"""Membership state: merge properties, joins and leaves, gossip spread, malformed gossip."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dynamod.core.membership import (
    JOINING,
    LEAVING,
    STATUS_RANK,
    ClusterState,
    MalformedState,
    MemberEntry,
    state_from_wire,
    state_to_wire,
)

IDS = ["n1", "n2", "n3", "n4"]
PARTITIONS = 8

entries = st.builds(MemberEntry, id=st.sampled_from(IDS), peer=st.sampled_from(["h:1", "h:2"]),
                    http=st.just("h:9"), status=st.sampled_from(sorted(STATUS_RANK)), version=st.integers(1, 4))


@st.composite
def states(draw):
    members = {e.id: e for e in draw(st.lists(entries, min_size=1, max_size=4))}
    ownership = tuple(draw(st.lists(st.sampled_from(sorted(members)), min_size=PARTITIONS, max_size=PARTITIONS)))
    return ClusterState(members=members, ownership=ownership, ring_version=draw(st.integers(1, 3)),
                        ring_author=draw(st.sampled_from(["", "n1", "n2"])))


@given(states(), states())
def test_merge_is_commutative(a, b):
    assert a.merge(b) == b.merge(a)


@given(states(), states(), states())
def test_merge_is_associative(a, b, c):
    assert a.merge(b).merge(c) == a.merge(b.merge(c))


@given(states())
def test_merge_is_idempotent(a):
    assert a.merge(a) == a


@given(states(), states())
def test_merged_ring_names_only_known_members(a, b):
    merged = a.merge(b)
    assert set(merged.ownership) <= set(merged.members)


def cluster(size: int = 3) -> ClusterState:
    members = [MemberEntry(f"n{i}", f"h{i}:7000", f"h{i}:8000") for i in range(1, size + 1)]
    return ClusterState.initial(members, 16)


def test_a_join_moves_only_the_partitions_the_newcomer_takes():
    before = cluster(3)
    after = before.plan_join(MemberEntry("n4", "h4:7000", "h4:8000"), n=3, author="n1")
    moved = [p for p in range(16) if before.ownership[p] != after.ownership[p]]
    assert moved and all(after.ownership[p] == "n4" for p in moved)
    assert after.members["n4"].status == JOINING and after.ring_version == before.ring_version + 1


def test_a_leave_hands_off_every_partition_and_the_last_member_cannot_leave():
    after = cluster(3).plan_leave("n2", n=3, author="n1")
    assert "n2" not in after.ownership and after.members["n2"].status == LEAVING
    with pytest.raises(ValueError, match="last member"):
        cluster(1).plan_leave("n1", n=3, author="n1")


def test_a_join_of_a_member_is_refused():
    with pytest.raises(ValueError, match="already a member"):
        cluster(3).plan_join(MemberEntry("n2", "x:1", "x:2"), n=3, author="n1")


def test_concurrent_plans_from_one_version_resolve_the_same_way_everywhere():
    base = cluster(3)
    a = base.plan_join(MemberEntry("n4", "h4:7000", "h4:8000"), 3, author="n1")
    b = base.plan_join(MemberEntry("n5", "h5:7000", "h5:8000"), 3, author="n3")
    assert a.merge(b).ownership == b.merge(a).ownership == b.ownership


def test_wire_round_trip_and_malformed_gossip_is_refused():
    state = cluster(3)
    assert state_from_wire(state_to_wire(state), 16) == state
    bad = [
        {"members": "nope"},
        {**state_to_wire(state), "ownership": ["n1"] * 15},
        {**state_to_wire(state), "ownership": ["ghost"] * 16},
        {**state_to_wire(state), "members": [["n1", "h", "h", "dancing", 1]]},
        {**state_to_wire(state), "ring_version": 0},
        None,
    ]
    for data in bad:
        with pytest.raises(MalformedState):
            state_from_wire(data, 16)


def gossip_rounds_to_spread(nodes: int, seed: int) -> int:
    """Rounds until every node has a view one node learned (each node gossips with one random
    peer per round, both keep the merge)."""
    rng = random.Random(seed)
    views = [cluster(nodes)] * nodes
    news = views[0].plan_join(MemberEntry("new", "x:7000", "x:8000"), 3, author="n1")
    views = [news] + views[1:]
    rounds = 0
    while any(view != news for view in views):
        rounds += 1
        for i in range(nodes):
            j = rng.choice([k for k in range(nodes) if k != i])
            merged = views[i].merge(views[j])
            views[i] = views[j] = merged
    return rounds


def test_a_new_view_reaches_all_of_ten_nodes_within_a_few_rounds():
    rounds = Counter(gossip_rounds_to_spread(10, seed) for seed in range(200))
    print("rounds to reach 10 nodes over 200 seeds:", dict(sorted(rounds.items())))
    assert max(rounds) <= 6
