"""What the nemeses plan is pure and seeded: partitions cut what their mode says, clock bumps stay
within milliseconds..minutes, process faults leave a majority up, and --nemesis is parsed strictly."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dynacheck.nemesis import parse_nemesis
from dynacheck.nemesis.clock import LARGEST_BUMP, SMALLEST_BUMP, ClockFault
from dynacheck.nemesis.network import PARTITION_MODES, grudge
from dynacheck.nemesis.process import minority


class FakeCluster:
    def __init__(self, count: int):
        self.ids = [f"n{i}" for i in range(1, count + 1)]


def can_reach(plan: dict[str, list[str]], sender: str, receiver: str) -> bool:
    return sender not in plan.get(receiver, [])


def test_isolating_one_node_cuts_it_off_both_ways_and_leaves_the_rest_whole():
    plan = grudge("one", ["a", "b", "c", "d", "e"], random.Random(1))
    [alone] = [node for node, dropped in plan.items() if len(dropped) == 4]
    others = [node for node in plan if node != alone]
    assert all(plan[node] == [alone] for node in others)


def test_halves_split_into_two_sides_that_cannot_talk():
    plan = grudge("halves", ["a", "b", "c", "d", "e"], random.Random(2))
    sizes = sorted(len(dropped) for dropped in plan.values())
    assert sizes == [2, 2, 2, 3, 3]
    for node, dropped in plan.items():
        for other in dropped:
            assert node in plan[other]  # symmetric


def test_a_bridge_node_talks_to_both_halves_which_cannot_talk_to_each_other():
    plan = grudge("bridge", ["a", "b", "c", "d", "e"], random.Random(3))
    [bridge] = [node for node, dropped in plan.items() if not dropped]
    assert all(bridge not in dropped for dropped in plan.values())
    assert sum(1 for dropped in plan.values() if dropped) == 4


@given(st.integers(3, 9), st.integers(0, 1000))
def test_in_a_majorities_ring_every_node_hears_a_majority_and_no_two_hear_the_same(count, seed):
    nodes = [f"n{i}" for i in range(count)]
    plan = grudge("majorities-ring", nodes, random.Random(seed))
    heard = {node: frozenset(set(nodes) - set(plan[node])) for node in nodes}
    assert all(len(visible) == count // 2 + 1 and node in visible for node, visible in heard.items())
    assert len(set(heard.values())) == count


@given(st.sampled_from(PARTITION_MODES), st.integers(3, 7), st.integers(0, 1000))
def test_partitions_replay_from_the_seed_and_never_cut_a_node_from_itself(mode, count, seed):
    nodes = [f"n{i}" for i in range(count)]
    plan = grudge(mode, nodes, random.Random(seed))
    assert plan == grudge(mode, nodes, random.Random(seed))
    assert set(plan) == set(nodes)
    assert all(node not in dropped for node, dropped in plan.items())


@given(st.integers(0, 10_000))
def test_clock_plans_bump_by_milliseconds_to_minutes_or_strobe(seed):
    plan = ClockFault(FakeCluster(3)).plan(random.Random(seed))
    if plan["mode"] == "bump":
        assert plan["offsets"] and set(plan["offsets"]) <= {"n1", "n2", "n3"}
        assert all(SMALLEST_BUMP - 0.001 <= abs(offset) <= LARGEST_BUMP for offset in plan["offsets"].values())
    else:
        assert plan["mode"] == "strobe" and plan["duration"] > 0 and plan["delta"] > 0


@given(st.integers(1, 9), st.integers(0, 1000))
def test_kills_and_pauses_leave_a_majority_running(count, seed):
    nodes = [f"n{i}" for i in range(count)]
    chosen = minority(nodes, random.Random(seed))
    assert 1 <= len(chosen) and (count - len(chosen) > count // 2 or count <= 2)


@given(st.integers(3, 9), st.integers(0, 1000), st.sets(st.integers(0, 8)))
def test_process_faults_keep_off_the_nodes_other_faults_hold(count, seed, held):
    nodes = [f"n{i}" for i in range(count)]
    avoid = frozenset(f"n{i}" for i in held if i < count)
    chosen = minority(nodes, random.Random(seed), avoid)
    if len(avoid) < count:
        assert not set(chosen) & avoid
    assert 1 <= len(chosen) <= max(1, (count - 1) // 2)


def test_parse_nemesis():
    assert parse_nemesis("none", local=False) == ()
    assert parse_nemesis("all", local=False) == ("partition", "clock", "kill", "pause", "disk", "power", "corrupt",
                                                 "membership")
    assert parse_nemesis("kill, clock,kill", local=False) == ("kill", "clock")
    # partitions need own addresses, power a FUSE mount (root)
    assert parse_nemesis("all", local=True, root=False) == ("clock", "kill", "pause", "disk", "corrupt", "membership")
    assert parse_nemesis("all", local=True, root=True) == ("clock", "kill", "pause", "disk", "power", "corrupt",
                                                           "membership")
    with pytest.raises(ValueError, match="own addresses"):
        parse_nemesis("partition", local=True)
    with pytest.raises(ValueError, match="needs root"):
        parse_nemesis("power", local=True, root=False)
    with pytest.raises(ValueError, match="unknown nemesis"):
        parse_nemesis("flood", local=False)


def status(began_ago, hinted: int = 0) -> dict:
    return {"hinted_keys": hinted, "anti_entropy": {"coverage": {
        "sweeps": 3, "pairs_exchanged": 3, "pairs_total": 32, "last_sweep_began_ago": began_ago}}}


def test_a_lost_copy_is_known_repaired_only_after_a_whole_sweep_that_began_after_the_loss():
    from dynacheck.nemesis.storage import not_repaired_because
    # The loss was 10 s ago: n1's last whole sweep began 12 s ago, before it.
    assert "n1 has not completed" in not_repaired_because({"n1": status(12.0), "n2": status(4.0)}, since_loss=10.0)
    assert not_repaired_because({"n1": status(9.5), "n2": status(4.0)}, since_loss=10.0) is None
    # A node restarted since (wiped) and has not finished a sweep yet.
    assert "n2 has not completed" in not_repaired_because({"n1": status(9.5), "n2": status(None)}, since_loss=10.0)
    assert "holds 2 hinted keys" in not_repaired_because({"n1": status(1.0, hinted=2)}, since_loss=10.0)
    assert "did not answer" in not_repaired_because({"n1": "n1 did not answer (refused)"}, since_loss=10.0)
    assert "does not report" in not_repaired_because({"n1": {"anti_entropy": {}}}, since_loss=1.0)
