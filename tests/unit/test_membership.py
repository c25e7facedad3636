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
    LEFT,
    MEMBER,
    STATUS_RANK,
    ClusterState,
    MalformedState,
    MemberEntry,
    Progress,
    accept_gossip,
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
    progress = draw(st.dictionaries(st.sampled_from(IDS), st.builds(
        Progress, seq=st.integers(0, 3), ring_version=st.integers(1, 3), pending=st.integers(0, 2)), max_size=4))
    return ClusterState(members=members, ownership=ownership, ring_version=draw(st.integers(1, 3)),
                        ring_author=draw(st.sampled_from(["", "n1", "n2"])), cluster="c", progress=progress)


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


def settle(state: ClusterState, now_ms: int = 1) -> ClusterState:
    """Every active member reports the current ring with nothing to transfer."""
    for member in state.active():
        state = state.with_progress(member.id, 0, now_ms)
    return state


def test_progress_is_reported_per_ring_version_and_a_restarted_node_still_wins():
    state = cluster(3)
    assert state.transfers_pending() == {"n1": None, "n2": None, "n3": None} and not state.settled()
    state = settle(state)
    assert state.settled() and not state.in_transition()
    moved = state.plan_join(MemberEntry("n4", "h4:7000", "h4:8000"), 3, author="n1")
    assert moved.transfers_pending()["n1"] is None, "a report on an older ring does not count"
    assert moved.with_progress("n1", 0, 1) is not moved and moved.in_transition()
    busy = moved.with_progress("n1", 7, 5)
    assert busy.with_progress("n1", 7, 6) is busy, "an unchanged report is not republished"
    # A restarted node's counter restarts low; the wall clock keeps its new reports ahead.
    restarted = moved.with_progress("n1", 0, 10_000)
    assert busy.merge(restarted).progress["n1"].pending == 0


def test_a_join_completes_once_every_member_reports_the_new_ring_settled():
    joined = settle(cluster(3)).plan_join(MemberEntry("n4", "h4:7000", "h4:8000"), 3, author="n1")
    assert joined.own_next_step("n4", 3) == joined, "transfers not yet reported"
    done = settle(joined, 2).own_next_step("n4", 3)
    assert done.members["n4"].status == MEMBER and not done.in_transition()


def test_a_leave_completes_once_the_leaver_holds_nothing():
    leaving = settle(cluster(3)).plan_leave("n2", 3, author="n2")
    still = leaving.with_progress("n1", 0, 2).with_progress("n3", 0, 2).with_progress("n2", 40, 2)
    assert still.own_next_step("n2", 3) == still
    done = still.with_progress("n2", 0, 3).own_next_step("n2", 3)
    assert done.members["n2"].status == LEFT and [m.id for m in done.active()] == ["n1", "n3"]


def test_a_claim_or_release_that_lost_to_a_concurrent_change_is_planned_again():
    base = settle(cluster(4))
    join = base.plan_join(MemberEntry("n5", "h5:7000", "h5:8000"), 3, author="n1")
    leave = base.plan_leave("n4", 3, author="n4")
    merged = join.merge(leave)  # same ring version: n4's ring wins, n5's claim is lost
    assert merged.members["n5"].status == JOINING and "n5" not in merged.ownership
    replanned = merged.own_next_step("n5", 3)
    assert "n5" in replanned.ownership and "n4" not in replanned.ownership
    assert replanned.ring_version == merged.ring_version + 1
    assert replanned.own_next_step("n4", 3) == replanned, "the leave stands: nothing to re-plan"
    # The other way round: the leave loses and n4 releases again.
    lost_leave = leave.merge(join.with_ring(join.ring, "n9"))
    assert "n4" in lost_leave.ownership and "n4" not in lost_leave.own_next_step("n4", 3).ownership


def test_gossip_of_another_cluster_is_refused_unless_it_admits_a_lone_node():
    mine, other = cluster(3), ClusterState.initial([MemberEntry("x1", "hx:7000", "hx:8000")], 16)
    assert accept_gossip(mine, other, "n1") is None
    assert accept_gossip(other, mine, "x1") is None, "a lone node adopts only a cluster that lists it"
    lone = ClusterState.initial([MemberEntry("n4", "h4:7000", "h4:8000")], 16)
    admitting = mine.plan_join(MemberEntry("n4", "h4:7000", "h4:8000"), 3, author="n1")
    assert accept_gossip(lone, admitting, "n4") == admitting
    assert accept_gossip(mine, admitting, "n1") == mine.merge(admitting)


def test_wire_round_trip_and_malformed_gossip_is_refused():
    state = settle(cluster(3))
    assert state_from_wire(state_to_wire(state), 16) == state
    bad = [
        {"members": "nope"},
        {**state_to_wire(state), "ownership": ["n1"] * 15},
        {**state_to_wire(state), "ownership": ["ghost"] * 16},
        {**state_to_wire(state), "members": [["n1", "h", "h", "dancing", 1]]},
        {**state_to_wire(state), "ring_version": 0},
        {**state_to_wire(state), "cluster": ""},
        {**state_to_wire(state), "progress": [["n1", -1, 1, 0]]},
        {**state_to_wire(state), "progress": [["n1", 1, 1]]},
        {**state_to_wire(state), "progress": [["n1", 2 ** 64, 1, 0]]},
        {**state_to_wire(state), "ownership": [["n1"]] * 16},
        {**state_to_wire(state), "members": [["n1", "no-port", "h1:8000", "member", 1]]},
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


def test_concurrent_leaves_of_every_other_member_leave_the_last_owner_a_member():
    base = settle(cluster(2))
    a_leaves, b_leaves = base.plan_leave("n1", 3, author="n1"), base.plan_leave("n2", 3, author="n2")
    merged = a_leaves.merge(b_leaves)  # n2's ring wins: n1 owns everything and cannot leave
    assert merged.ring.members == ("n1",) and merged.members["n1"].status == LEAVING
    stays = merged.own_next_step("n1", 3)
    assert stays.members["n1"].status == MEMBER and stays.ring.members == ("n1",)
