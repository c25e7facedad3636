"""The membership nemesis: its seeded plan (pure), the runner's schedule around it, its 409 retries on a
fake clock, and the checkers on a ring that changed (convergence on the final ring's preference lists,
replicas not judged while the ring changes, faults saying which change did not run)."""

from __future__ import annotations

import random
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dynacheck.checkers import convergence, faults, replicas
from dynacheck.checkers.convergence import ring_owners, round_verdict
from dynacheck.db import Cluster
from dynacheck.generator import SECOND
from dynacheck.nemesis.membership import (
    ACTIONS,
    MembershipFault,
    Refused,
    Roster,
    apply_change,
    mismatch,
    next_change,
)
from dynacheck.nemesis.storage import Skipped
from dynacheck.synthetic import MS, HistoryBuilder, version
from dynactl.inventory import Host
from dynamod.client import ClientError
from dynamod.core.ring import partition_of

START = Roster(members=("n1", "n2", "n3"), spares=("n4", "n5"), floor=3)


def plan_sequence(roster: Roster, seed: int, count: int) -> list[dict]:
    rng = random.Random(seed)
    changes = []
    for _ in range(count):
        change = next_change(roster, rng)
        changes.append(change)
        roster = apply_change(roster, change)
    return changes


@pytest.mark.parametrize("spares", [("n4",), ("n4", "n5")])
def test_five_planned_changes_meet_every_action_whatever_the_seed(spares):
    for seed in range(30):
        changes = plan_sequence(Roster(members=("n1", "n2", "n3"), spares=spares, floor=3), seed, 5)
        assert {change["action"] for change in changes} == {"join", "leave", "replace", "remove"}, seed
        assert [change["action"] for change in changes] == list(ACTIONS)


def test_a_replace_takes_a_spare_in_the_dead_members_place_and_the_dead_node_becomes_a_spare():
    roster = Roster(members=("n1", "n2", "n3"), spares=("n4",), floor=3)
    after = apply_change(roster, {"action": "replace", "node": "n4", "dead": "n2", "step": 2})
    assert after == Roster(members=("n1", "n4", "n3"), spares=("n2",), floor=3, step=3)


@given(st.integers(0, 10_000), st.lists(st.sets(st.sampled_from(["n1", "n2", "n3", "n4", "n5"])), max_size=12))
def test_a_plan_keeps_every_host_and_the_floor_and_takes_no_avoided_node(seed, avoids):
    rng, roster = random.Random(seed), START
    for avoid in avoids:
        change = next_change(roster, rng, frozenset(avoid))
        assert not set(change["nodes"]) & avoid
        assert mismatch(change, roster.members, roster.spares) is None or change["action"] == "none"
        roster = apply_change(roster, change)
        assert sorted(roster.members + roster.spares) == ["n1", "n2", "n3", "n4", "n5"]
        assert len(roster.members) >= 3 and len(set(roster.members)) == len(roster.members)


def test_with_every_node_avoided_the_plan_is_no_change_and_says_why():
    change = next_change(START, random.Random(1), frozenset({"n1", "n2", "n3", "n4", "n5"}))
    assert change["action"] == "none" and change["nodes"] == [] and "avoiding" in change["reason"]
    assert apply_change(START, change).members == START.members
    assert "avoiding" in mismatch(change, START.members, START.spares)


def test_a_change_the_run_cannot_make_is_explained():
    assert "n4 is not a spare" in mismatch({"action": "join", "node": "n4"}, ["n1", "n4"], ["n5"])
    assert "n2 is not a member" in mismatch({"action": "replace", "node": "n4", "dead": "n2"}, ["n1"], ["n4"])
    assert "last member" in mismatch({"action": "leave", "node": "n1"}, ["n1"], ["n4"])
    assert mismatch({"action": "remove", "node": "n2", "dead": "n2"}, ["n1", "n2"], []) is None


# -- the runner's schedule: other faults only take members the plan has kept ------------------------

def host(name: str) -> Host:
    return Host(name=name, address="127.0.0.1", vars={"dynamod_http_port": 1, "dynamod_peer_port": 2})


def fake_cluster() -> Cluster:
    return Cluster(hosts=[host("n1"), host("n2"), host("n3")], spares=[host("n4"), host("n5")], control=None)


def test_the_schedule_never_kills_a_node_that_left_or_that_a_change_in_progress_takes(tmp_path):
    from dynacheck.nemesis import make_faults
    from dynacheck.progress import Progress
    from dynacheck.runner import Options, Test
    for seed in range(15):
        options = Options(nemesis=("kill", "membership"), time_limit=120, seed=seed, nemesis_interval=3,
                          nemesis_duration=4)
        (tmp_path / str(seed)).mkdir()
        test = Test(options, tmp_path / str(seed), Progress(120, sys.stderr))
        test.cluster = fake_cluster()
        test.faults = make_faults(options.nemesis, test.cluster, options.w)
        schedule = test.plan_faults()
        test.history.close()
        changes = [fault for fault in schedule if fault.fault == "membership"]
        assert {change.plan["action"] for change in changes} >= {"join", "leave", "replace", "remove"}
        for kill in (fault for fault in schedule if fault.fault == "kill"):
            roster = Roster(members=("n1", "n2", "n3"), spares=("n4", "n5"), floor=3)
            for change in changes:
                if change.start <= kill.start and change.stop > kill.start:
                    assert not set(change.plan["nodes"]) & set(kill.plan["nodes"]), (seed, kill, change)
                if change.start <= kill.start:
                    roster = apply_change(roster, change.plan)
                elif change.start < kill.stop:  # a change that starts while the kill lasts takes other nodes
                    assert not set(change.plan["nodes"]) & set(kill.plan["nodes"]), (seed, kill, change)
            assert set(kill.plan["nodes"]) <= set(roster.members), (seed, kill, roster)  # members at its start


def test_the_cluster_member_list_follows_departures_and_joins():
    cluster = fake_cluster()
    position = cluster.depart("n2")
    assert cluster.ids == ["n1", "n3"] and [h.name for h in cluster.departing] == ["n2"]
    cluster.restore("n2", position)
    assert cluster.ids == ["n1", "n2", "n3"] and not cluster.departing
    position = cluster.depart("n2")
    cluster.admit("n5", position)  # n5 replaced n2, in its place
    cluster.retire("n2")
    assert cluster.ids == ["n1", "n5", "n3"] and cluster.spare_ids == ["n4", "n2"]
    assert cluster.membership_version == 5 and cluster.host("n2").name == "n2"


# -- a refused change is retried on a 409 and skipped in the end --------------------------------------

class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def fault_answering(answers: list) -> tuple[MembershipFault, FakeTime]:
    """A MembershipFault whose node client answers (or raises) each of ``answers`` in turn."""
    fake = FakeTime()
    fault = MembershipFault(fake_cluster(), retry_seconds=5.0, clock=fake.clock, sleep=fake.sleep)

    class Client:
        def join(self, seed: str, replace: str | None = None) -> dict:
            answer = answers.pop(0) if len(answers) > 1 else answers[0]
            if isinstance(answer, Exception):
                raise answer
            return answer

    fault._ask = lambda node, call: call(Client())
    return fault, fake


def test_a_change_refused_with_409_is_retried_until_it_is_accepted():
    busy = ClientError(409, {"error": "a join is in progress"})
    fault, fake = fault_answering([busy, busy, {"node": "n4"}])
    answer = fault._retrying(lambda client: client.join("seed"), "n4", "join of n4")
    assert answer == {"node": "n4", "refused_409": 2, "seconds": 2.0} and fake.now == 2.0


def test_a_change_still_refused_with_409_at_the_deadline_is_skipped_and_another_refusal_is_final():
    fault, fake = fault_answering([ClientError(409, {"error": "a leave is in progress"})])
    with pytest.raises(Skipped, match="refused with 409 for 5s .*a leave is in progress"):
        fault._retrying(lambda client: client.join("seed"), "n4", "join of n4")
    assert fake.now == 5.0
    fault, _ = fault_answering([ClientError(400, {"error": "bad seed"})])
    with pytest.raises(Refused, match="bad seed"):
        fault._retrying(lambda client: client.join("seed"), "n4", "join of n4")


# -- convergence on the final ring ------------------------------------------------------------------

A1 = version(("a", 1), [1])
A2 = version(("a", 2), [1, 2], seen=[("a", 1)])
FINAL = ["n1", "n2", "n4", "n5"]  # n3 was removed, n4 and n5 joined


def final_ring(owners: dict[str, list[str]], partitions: int = 8) -> dict:
    """A ring whose preference lists give each key of ``owners`` its replicas (others: n1, n2, n4)."""
    lists = [["n1", "n2", "n4"] for _ in range(partitions)]
    for key, nodes in owners.items():
        lists[partition_of(key.encode(), partitions)] = nodes
    return {"partitions": partitions, "n": 3, "preference_lists": lists}


def polled(copies: dict[str, dict[str, list]]) -> HistoryBuilder:
    h = HistoryBuilder()
    for key, by_node in copies.items():
        for i, node in enumerate(FINAL):
            h.poll(0, key, node, by_node.get(node, []), 10 + i)
    return h


def test_a_key_converges_only_when_every_replica_of_the_final_ring_holds_it():
    ring = final_ring({"k": ["n1", "n4", "n5"]})
    owners = ring_owners(ring)
    assert owners("k") == ["n1", "n4", "n5"]
    # Three identical copies, but n5 (a replica on the final ring) holds none and n2 (not one) does.
    h = polled({"k": {"n1": [A2], "n2": [A2], "n4": [A2]}})
    ops = [op for op in h.history()]
    assert round_verdict(ops, 3, FINAL) == {"k": True}  # the rule without the ring is fooled
    assert round_verdict(ops, 3, FINAL, owners) == {"k": False}
    result = convergence.check({"n": 3, "nodes": ["n1", "n2", "n3"], "final_nodes": FINAL, "final_ring": ring},
                               h.history())
    assert result["valid"] is False and result["replicas_from"] == "final ring's preference lists"
    assert result["diverged"][0]["nodes"]["n5"] == []


def test_on_the_final_ring_other_holders_must_agree_and_are_reported_as_extra_copies():
    ring = final_ring({"k": ["n1", "n4", "n5"]})
    test = {"n": 3, "nodes": ["n1", "n2", "n3"], "final_nodes": FINAL, "final_ring": ring}
    agreeing = convergence.check(test, polled({"k": {"n1": [A2], "n4": [A2], "n5": [A2], "n2": [A2]}}).history())
    assert agreeing["valid"] is True and agreeing["extra_copies"] == {"k": ["n2"]}
    stale = convergence.check(test, polled({"k": {"n1": [A2], "n4": [A2], "n5": [A2], "n2": [A1]}}).history())
    assert stale["valid"] is False  # a non-replica holding something else may hold the only copy of it
    alone = convergence.check(test, polled({"k": {"n1": [A2], "n4": [A2], "n5": [A2]}}).history())
    assert alone["valid"] is True and alone["extra_copies_count"] == 0 and alone["final_nodes"] == FINAL


# -- replicas: not judged while the ring changes, or while members outnumber N ------------------------

def sibling(actor: str, counter: int) -> dict:
    return {"dot": [actor, counter], "clock": {"vector": {actor: counter}, "cloud": []}, "elements": [counter],
            "deleted": False}


def monitor_poll(h: HistoryBuilder, node: str, at_ms: float, siblings: list) -> None:
    h._op(at_ms, process="monitor", type="invoke", f="replica", key="cart-0", node=node, value=None)
    h._op(at_ms + 1, process="monitor", type="ok", f="replica", key="cart-0", node=node, value=siblings)


def change(h: HistoryBuilder, id_: int, action: str, node: str, start_ms: float, stop_ms: float) -> None:
    plan = {"id": id_, "action": action, "node": node, "nodes": [node]}
    h.nemesis("start-membership", start_ms, start_ms + 10, value=plan)
    h.nemesis("stop-membership", stop_ms, stop_ms + 10, value=plan)


def test_a_version_leaving_a_replica_while_the_ring_changes_is_not_judged_but_one_after_is():
    test = {"n": 3, "nodes": ["n1", "n2", "n3"], "mode": "vclock"}
    h = HistoryBuilder()
    monitor_poll(h, "n2", 0, [sibling("a", 1)])
    change(h, 0, "join", "n4", 100, 300)        # n2 gives a partition to n4 and drops its copy
    monitor_poll(h, "n2", 500, [])
    change(h, 1, "leave", "n4", 600, 800)       # back to three members: judged again after it
    monitor_poll(h, "n2", 1000, [sibling("b", 1)])
    monitor_poll(h, "n2", 1100, [])
    result = replicas.check(test, h.history())
    assert result["valid"] is False and result["vanished_count"] == 1 and result["vanished"][0]["dot"] == "b/1"
    assert result["pairs_judged"] == 1 and result["pairs_not_judged_membership"] == 2


def test_while_members_outnumber_n_after_a_join_nothing_is_judged():
    test = {"n": 3, "nodes": ["n1", "n2", "n3"], "mode": "vclock"}
    h = HistoryBuilder()
    change(h, 0, "join", "n4", 100, 300)
    monitor_poll(h, "n2", 1000, [sibling("b", 1)])
    monitor_poll(h, "n2", 1100, [])  # four members: a stand-in may hand its copy off
    result = replicas.check(test, h.history())
    assert result["valid"] is True and result["pairs_judged"] == 0


# -- faults: what did not run is said, never a failure ---------------------------------------------

def test_a_change_refused_for_another_in_progress_is_reported_not_run_and_the_run_stays_valid():
    plans = [{"id": 0, "action": "join", "node": "n4", "nodes": ["n4"]},
             {"id": 1, "action": "replace", "node": "n5", "dead": "n2", "nodes": ["n2", "n5"]}]
    schedule = [{"id": plan["id"], "fault": "membership", "start": (1 + i) * SECOND, "stop": (2 + i) * SECOND,
                 "plan": plan} for i, plan in enumerate(plans)]
    h = HistoryBuilder()
    h.nemesis("start-membership", 1000, 1500, value=plans[0])
    h.nemesis("stop-membership", 2000, 2500, value=plans[0])
    reason = "replace of n2 by n5 refused with 409 for 20s (20 tries): a join is in progress"
    h.nemesis("start-membership", 3000, 23000, outcome="info", value=plans[1], skipped=reason,
              error=f"skipped: {reason}")
    h.nemesis("stop-membership", 24000, 24001, value=plans[1])
    result = faults.check({"nemesis": ["membership"], "fault_schedule": schedule, "nodes": ["n1", "n2", "n3"],
                           "final_nodes": ["n1", "n2", "n3", "n4"]}, h.history())
    assert result["valid"] is True
    summary = result["membership"]
    assert summary["actions"]["join"] == {"planned": 1, "ran": 1, "skipped": 0, "failed": 0, "unknown": 0}
    assert summary["actions"]["replace"]["skipped"] == 1 and summary["changes_run"] == 1
    assert summary["not_run"] == [{"id": 1, "change": "replace n2 by n5", "status": "skipped", "reason": reason}]
    assert any("replace n2 by n5" in warning and "409" in warning for warning in result["warnings"])
    assert summary["members_at_end"] == ["n1", "n2", "n3", "n4"] and MS == 1_000_000


# -- a change that does not happen leaves the member list as it was ---------------------------------

class ScriptedCluster(Cluster):
    """A Cluster whose host actions only record what was asked (every one succeeds)."""

    def __init__(self) -> None:
        super().__init__(hosts=[host("n1"), host("n2"), host("n3")], spares=[host("n4"), host("n5")], control=None)
        self.actions: list[tuple[str, str]] = []

    def service(self, action, nodes=None):
        from dynactl.remote import HostResult
        self.actions += [(action, node) for node in nodes]
        return {node: HostResult(host=node, ok=action != "status") for node in nodes}

    def make_spare(self, node):
        from dynactl.remote import HostResult
        self.actions.append(("wipe", node))
        return {node: HostResult(host=node, ok=True)}


def scripted_fault(answer, spare_lists: tuple[str, ...] = ("n4",)) -> tuple[MembershipFault, ScriptedCluster]:
    """Every admin call answers ``answer`` (or raises it); every member sees every other down,
    and the spare n4 lists ``spare_lists`` as its members."""
    cluster = ScriptedCluster()
    fake = FakeTime()
    fault = MembershipFault(cluster, retry_seconds=3.0, clock=fake.clock, sleep=fake.sleep)

    class Client:
        def __init__(self, asked: str) -> None:
            self.asked = asked

        def status(self) -> dict:
            listed = spare_lists if self.asked == "n4" else ("n1", "n2", "n3")
            return {"members": [{"id": node, "status": "down"} for node in listed]}

        def _answer(self, *args, **kwargs):
            if isinstance(answer, Exception):
                raise answer
            return answer
        join = leave = remove = _answer

    fault._ask = lambda node, call: call(Client(node))
    return fault, cluster


def test_a_leave_refused_until_the_deadline_is_skipped_and_the_node_is_a_member_again_in_its_place():
    fault, cluster = scripted_fault(ClientError(409, {"error": "a join is in progress"}))
    with pytest.raises(Skipped, match="leave of n2 refused with 409"):
        fault.start({"id": 0, "action": "leave", "node": "n2", "nodes": ["n2"]})
    assert cluster.ids == ["n1", "n2", "n3"] and not cluster.departing and fault.pending is None


def test_a_replace_refused_restarts_the_killed_member_and_empties_the_spare_again():
    fault, cluster = scripted_fault(ClientError(400, {"error": "unknown node"}))
    results = fault.start({"id": 0, "action": "replace", "node": "n4", "dead": "n2", "nodes": ["n2", "n4"]})
    assert not results["n4"].ok and "unknown node" in results["n4"].error
    assert cluster.ids == ["n1", "n2", "n3"] and sorted(cluster.spare_ids) == ["n4", "n5"]
    assert cluster.actions == [("kill", "n2"), ("wipe", "n4"), ("start", "n4"), ("wipe", "n4"), ("start", "n2")]


def test_a_replace_puts_the_spare_in_the_dead_members_place_and_the_dead_node_among_the_spares():
    fault, cluster = scripted_fault({"node": "n4", "replaces": "n2"})
    results = fault.start({"id": 0, "action": "replace", "node": "n4", "dead": "n2", "nodes": ["n2", "n4"]})
    assert results["n2"].ok and results["n4"].ok and fault.pending["id"] == 0
    assert cluster.ids == ["n1", "n4", "n3"] and cluster.spare_ids == ["n5", "n2"]
    assert ("wipe", "n2") in cluster.actions and ("start", "n2") not in cluster.actions


LOST_ANSWER = ClientError(502, {"error": "seed 10.0.0.1:7000 did not answer the join (2 tries; no answer within 1s): "
                                         "it may have admitted this node anyway"})


def test_a_replace_whose_answer_was_lost_but_that_put_the_spare_in_the_cluster_is_a_replace_made():
    """``dynacheck sim`` seed 9105: the seed took the replacement and only its answer was lost
    (the spare learnt its cluster by gossip); sending the spare back would leave the ring an
    owner nobody runs."""
    fault, cluster = scripted_fault(LOST_ANSWER, spare_lists=("n1", "n4", "n3"))
    results = fault.start({"id": 0, "action": "replace", "node": "n4", "dead": "n2", "nodes": ["n2", "n4"]})
    assert results["n2"].ok and results["n4"].ok and "the change was made" in results["n2"].stdout
    assert cluster.ids == ["n1", "n4", "n3"] and cluster.spare_ids == ["n5", "n2"]


def test_a_join_whose_answer_was_lost_and_whose_spare_stayed_alone_sends_the_spare_back():
    """Whatever the seed lists (a member may still list a node removed a moment before), a spare
    that is still alone was not admitted."""
    fault, cluster = scripted_fault(LOST_ANSWER)
    results = fault.start({"id": 0, "action": "join", "node": "n4", "nodes": ["n4"]})
    assert not results["n4"].ok and "may have admitted" in results["n4"].error
    assert cluster.ids == ["n1", "n2", "n3"] and sorted(cluster.spare_ids) == ["n4", "n5"]
    assert cluster.actions[-1] == ("wipe", "n4")


def test_a_join_refused_with_409_to_the_end_sends_the_spare_back_even_if_it_took_gossip_meanwhile():
    """Seed 12025: members that missed a removal gossip to the removed node's host, started again
    as a spare, which then lists them; the refusals are what counts."""
    fault, cluster = scripted_fault(ClientError(409, {"error": "n4 is already in a cluster of 4 members"}),
                                    spare_lists=("n1", "n4", "n3"))
    with pytest.raises(Skipped, match="refused with 409"):
        fault.start({"id": 0, "action": "join", "node": "n4", "nodes": ["n4"]})
    assert cluster.ids == ["n1", "n2", "n3"] and cluster.actions[-1] == ("wipe", "n4")


def test_a_removal_is_not_settled_while_a_live_member_still_lists_the_removed_node():
    """Seed 12025: the member that made the removal died before it gossiped; the others still
    counted the removed node in."""
    fault, cluster = scripted_fault({"node": "n1", "removed": "n2"})
    fault.health = lambda host, hosts: (True, "")
    change = {"id": 0, "action": "remove", "node": "n2", "dead": "n2", "nodes": ["n2"]}
    cluster.depart("n2")
    assert fault._unsettled(change) == "n1 still lists n2; n3 still lists n2"
