"""The availability checker: writes a sloppy quorum could have taken must not be refused."""

from __future__ import annotations

import json
from typing import Any

from dynacheck.checkers import CHECKERS, availability, check_all
from dynacheck.history import FAIL, INFO, OK, Op
from dynacheck.synthetic import HistoryBuilder

NODES = ["n1", "n2", "n3"]
TEST = {"workload": "cart", "n": 3, "r": 2, "w": 2, "nodes": NODES, "mode": "vclock", "quiet_margin": 1.0}
UNAVAILABLE = "HTTP 503: quorum not reached: too many replicas failed"


class Run:
    """A HistoryBuilder whose writes get unique elements, and whose refusals carry an error text."""

    def __init__(self) -> None:
        self.builder = HistoryBuilder()
        self.errors: dict[int, str] = {}
        self.next_element = 0

    def writes(self, count: int, from_ms: float, node: str = "n1", outcome: str = OK, error: str = UNAVAILABLE,
               f: str = "add", step_ms: float = 10, key: str = "k") -> None:
        """``count`` writes sent to ``node``, each lasting 5 ms, one every ``step_ms`` from ``from_ms``."""
        for i in range(count):
            element = self.next_element
            self.next_element += 1
            at = from_ms + i * step_ms
            self.builder.add(element, key, element, at, at + 5, outcome=outcome, f=f, node=node)
            if outcome != OK:
                self.errors[element] = error

    def nemesis(self, fault: str, plan: dict[str, Any], start_ms: float, stop_ms: float | None,
                stop_outcome: str = OK, start_outcome: str = OK) -> None:
        """A fault started (``start_outcome``) at ``start_ms`` and stopped at ``stop_ms`` (None:
        never stopped)."""
        self.builder.nemesis(f"start-{fault}", start_ms, start_ms + 1, value=plan, outcome=start_outcome)
        if stop_ms is not None:
            self.builder.nemesis(f"stop-{fault}", stop_ms, stop_ms + 1, outcome=stop_outcome, value=plan)

    def history(self) -> list[Op]:
        ops = self.builder.history()
        for op in ops:
            if isinstance(op.get("process"), int) and op["type"] in (FAIL, INFO) and op["value"] in self.errors:
                op["error"] = self.errors[op["value"]]
        return ops


def check(run: Run, **test: Any) -> dict[str, Any]:
    result = availability.check({**TEST, **test}, run.history(), None)
    json.dumps(result)  # results.json must be able to hold it
    return result


ISOLATE_N1 = {"mode": "one", "grudge": {"n1": ["n2", "n3"], "n2": ["n1"], "n3": ["n1"]}, "id": 0}


def test_writes_taken_in_quiet_times_are_valid():
    run = Run()
    run.writes(150, 0)
    result = check(run)
    assert result["valid"] is True
    assert (result["judged_count"], result["refused_count"], result["refused_fraction"]) == (150, 0, 0.0)
    assert result["judged_by_fault"] == {"none": 150}


def test_refusals_above_the_share_with_every_node_up_are_invalid_with_examples():
    run = Run()
    run.writes(148, 0)
    run.writes(2, 2000, node="n2", outcome=INFO, f="write", key="k2")
    result = check(run)
    assert result["valid"] is False and "all writes" in result["reason"]
    assert (result["judged_count"], result["refused_count"], result["refused_fraction"]) == (150, 2, 0.0133)
    example = result["examples"][0]
    assert {key: example[key] for key in ("f", "key", "node", "type", "error", "stage", "faults", "needed")} == {
        "f": "write", "key": "k2", "node": "n2", "type": INFO, "error": UNAVAILABLE, "stage": "write",
        "faults": [], "needed": 2}
    assert example["reachable"] == NODES and isinstance(example["index"], int)


def test_one_refusal_in_a_hundred_is_within_the_share():
    run = Run()
    run.writes(99, 0)
    run.writes(1, 2000, outcome=INFO)
    assert check(run)["valid"] is True


def test_few_judged_writes_are_not_exercised_yet_two_refusals_among_them_fail():
    run = Run()
    run.writes(20, 0)
    run.writes(1, 1000, outcome=INFO)  # one unlucky timeout in a short run
    result = check(run)
    assert result["valid"] is True and result["exercised"] is False and "fewer than 100" in result["reason"]
    run.writes(4, 2000, outcome=INFO)  # a fifth refused: a short run can fail too
    result = check(run)
    assert result["valid"] is False and result["judged_count"] == 25
    assert check(run, w="x")["valid"] == "unknown"


def test_refusals_by_a_coordinator_in_a_minority_are_not_counted():
    run = Run()
    run.nemesis("partition", ISOLATE_N1, 0, 5000)
    run.writes(100, 1500, node="n1", outcome=INFO)  # settled, inside the partition: n1 reaches only itself
    run.writes(120, 1505, node="n2")  # the majority side takes its writes
    result = check(run)
    assert result["valid"] is True
    assert (result["judged_count"], result["refused_count"]) == (120, 0)
    assert result["judged_by_fault"] == {"partition": 120}
    assert result["refused_not_counted"]["minority"] == 100


def test_refusals_on_the_majority_side_of_a_partition_are_counted():
    run = Run()
    run.nemesis("partition", ISOLATE_N1, 0, 5000)
    run.writes(100, 1500, node="n2", outcome=INFO)
    result = check(run)
    assert result["valid"] is False and result["refused_by_fault"] == {"partition": 100}
    assert result["examples"][0]["reachable"] == ["n2", "n3"] and result["examples"][0]["faults"] == ["partition"]


def test_a_partition_whose_stop_failed_still_counts_as_in_place():
    run = Run()
    run.nemesis("partition", ISOLATE_N1, 0, 1000, stop_outcome=FAIL)
    run.writes(100, 3000, node="n1", outcome=INFO)  # the rules may still be there: no excuse can be ruled out
    result = check(run)
    assert result["refused_count"] == 0 and result["refused_not_counted"]["minority"] == 100


def test_refusals_by_a_killed_coordinator_are_not_counted_and_the_others_are_judged():
    run = Run()
    run.nemesis("kill", {"nodes": ["n1"], "id": 0}, 0, 5000)
    run.writes(100, 1500, node="n1", outcome=FAIL, error="connection refused")
    run.writes(100, 1505, node="n3")
    result = check(run)
    assert result["valid"] is True and result["judged_by_fault"] == {"kill": 100}
    assert result["refused_not_counted"]["coordinator_down"] == 100


def test_fallbacks_make_w_reachable_so_refusals_count_and_without_them_they_do_not():
    # W = 3 with one node killed: five nodes leave four up (stand-ins for the dead owner), three leave two.
    five = [f"n{i}" for i in range(1, 6)]
    run = Run()
    run.nemesis("kill", {"nodes": ["n4"], "id": 0}, 0, 5000)
    run.writes(100, 1500, node="n1", outcome=INFO, error="HTTP 503: acks 0")
    result = check(run, n=3, w=3, nodes=five)
    assert result["valid"] is False and (result["judged_count"], result["refused_count"]) == (100, 100)
    assert result["examples"][0]["reachable"] == ["n1", "n2", "n3", "n5"]
    result = check(run, n=3, w=3, nodes=["n1", "n2", "n4"])
    assert result["judged_count"] == 0 and result["refused_not_counted"]["minority"] == 100


def test_a_refusal_right_after_a_fault_starts_or_stops_is_not_counted():
    run = Run()
    run.nemesis("kill", {"nodes": ["n3"], "id": 0}, 1000, 3000)
    run.writes(50, 1100, node="n1", outcome=INFO, step_ms=15)  # within the margin after the start
    run.writes(10, 3100, node="n1", outcome=INFO)  # within the margin after the stop
    result = check(run)
    assert result["refused_count"] == 0 and result["refused_not_counted"]["unsettled"] == 60
    assert result["unsettled_refusals_after"] == {"start-kill": 50, "stop-kill": 10}


def test_a_failed_read_before_the_write_counts_against_max_r_w():
    run = Run()
    run.nemesis("kill", {"nodes": ["n3"], "id": 0}, 0, 5000)
    run.writes(100, 1500, node="n1", outcome=FAIL, error=f"read before the add: {UNAVAILABLE}")
    result = check(run)
    assert result["refused_count"] == 100 and result["read_before_write_count"] == 100
    assert result["examples"][0]["stage"] == "read"
    # R = 3: the add's read needs every node, so with n3 down it had an excuse; a blind write (W = 2) did not.
    assert check(run, r=3)["refused_not_counted"]["minority"] == 100
    blind = Run()
    blind.nemesis("kill", {"nodes": ["n3"], "id": 0}, 0, 5000)
    blind.writes(100, 1500, node="n1", outcome=INFO, f="write")
    assert check(blind, r=3)["refused_count"] == 100


def test_removes_and_deletes_are_writes_and_neither_a_4xx_nor_an_empty_remove_is_a_refusal():
    run = Run()
    run.writes(60, 0, f="remove")
    run.writes(60, 1000, f="delete")
    run.writes(5, 2000, outcome=FAIL, error="HTTP 400: bad context")
    run.writes(5, 3000, outcome=FAIL, error="nothing to remove: the read found an empty cart", f="remove")
    result = check(run)
    assert result["valid"] is True and result["judged_count"] == 120
    assert result["refused_not_counted"]["client_error"] == 5 and result["refused_not_counted"]["no_write"] == 5


def test_one_fault_kind_refusing_too_much_is_invalid_even_when_diluted_overall():
    run = Run()
    run.writes(1000, 0, step_ms=6)
    run.nemesis("pause", {"nodes": ["n3"], "id": 0}, 7000, 10000)
    run.writes(90, 8100, node="n1", step_ms=10)
    run.writes(10, 9050, node="n1", outcome=INFO, step_ms=10)
    result = check(run)
    assert result["refused_fraction"] < availability.MAX_REFUSED_SHARE
    assert result["valid"] is False and result["reason"].endswith("(pause)")
    assert result["by_fault"]["pause"]["fraction"] == 0.1 and result["by_fault"]["pause"]["exercised"] is True


def test_a_replaced_node_leaves_the_members_and_its_replacement_joins_after_the_change():
    run = Run()
    run.nemesis("membership", {"action": "replace", "node": "n4", "dead": "n3", "id": 0}, 0, 3000)
    run.writes(50, 1500, node="n1", outcome=INFO, step_ms=20)  # n3 gone, n4 joining: n1 reaches n1, n2
    run.writes(100, 5000, node="n1", outcome=INFO)  # n1, n2, n4 after the change
    result = check(run, w=3, r=3)
    assert result["refused_not_counted"]["minority"] == 50
    assert result["refused_count"] == 100 and result["examples"][0]["reachable"] == ["n1", "n2", "n4"]
    assert result["by_fault"]["none"]["judged"] == 100


def test_a_spare_is_no_member_until_it_joins_and_a_change_that_did_nothing_takes_no_node():
    run = Run()
    run.nemesis("membership", {"action": "none", "nodes": [], "reason": "no spare", "id": 0}, 0, 1000)
    run.writes(100, 3000, node="n1", outcome=INFO)
    result = check(run, w=3, nodes=["n1", "n2", "n3", "n4"], spare_nodes=["n4"])
    assert result["members"] == NODES and result["refused_count"] == 100
    assert result["judged_by_fault"] == {"none": 100}
    without_spares = check(run, w=4, nodes=["n1", "n2", "n3", "n4"])
    assert without_spares["judged_count"] == 100  # n4 counted as a member: four nodes in reach


def test_writes_sent_to_a_node_that_left_are_not_judged():
    run = Run()
    run.nemesis("membership", {"action": "leave", "node": "n1", "id": 0}, 0, 1000)
    run.writes(100, 3000, node="n1", outcome=FAIL, error="connection refused")
    assert check(run)["refused_not_counted"]["not_member"] == 100


def test_the_checker_is_registered_and_runs_with_the_others():
    run = Run()
    run.writes(10, 0)
    assert "availability" in CHECKERS
    assert check_all(TEST, run.history(), None)["checkers"]["availability"]["exercised"] is False


LOSSY = {"delay_ms": 20, "jitter_ms": 5, "loss_percent": 5, "id": 0}
SLOW = {"delay_ms": 200, "jitter_ms": 50, "loss_percent": 0, "id": 0}
FAST = {"delay_ms": 100, "jitter_ms": 20, "loss_percent": 0, "id": 0}


def test_refusals_under_a_netem_that_can_outlast_the_deadline_are_not_counted():
    for plan in (LOSSY, SLOW):
        run = Run()
        run.nemesis("netem", plan, 0, 5000)
        run.writes(100, 1500, node="n2", outcome=INFO, error="HTTP 503: quorum not reached: timeout")
        run.writes(120, 1505, node="n1")
        result = check(run)
        assert result["valid"] is True, plan
        assert result["refused_not_counted"]["slow_link"] == 100 and result["not_judged"]["slow_link"] == 220


def test_refusals_under_a_lossless_netem_whose_round_trips_fit_the_deadline_are_counted():
    run = Run()
    run.nemesis("netem", FAST, 0, 5000)
    run.writes(100, 1500, node="n2", outcome=INFO)
    result = check(run)
    assert result["valid"] is False and result["refused_by_fault"] == {"netem": 100}
    # The same delay against a shorter deadline is an excuse; the deadline is test.json's.
    assert check(run, request_timeout=0.4)["refused_not_counted"]["slow_link"] == 100
    assert check(run, request_timeout="1")["request_timeout_s"] == availability.DEFAULT_REQUEST_TIMEOUT_S


def test_the_default_deadline_is_the_one_every_run_sets():
    from dynacheck.db import TEST_NODE_CONFIG

    assert availability.DEFAULT_REQUEST_TIMEOUT_S == TEST_NODE_CONFIG["request_timeout"]
    assert availability.outlasts_deadline({}, 1.0) and availability.outlasts_deadline({"loss_percent": "x"}, 1.0)


def test_a_node_that_joined_and_then_left_at_the_same_instant_is_no_member_after():
    """The simulator runs a change's stop and the next change's start at one simulated time:
    the join ended first, and the leave that followed takes the node out."""
    run = Run()
    run.nemesis("membership", {"action": "join", "node": "n4", "nodes": ["n4"], "id": 0}, 0, 1000)
    run.nemesis("membership", {"action": "leave", "node": "n4", "nodes": ["n4"], "id": 1}, 1001, 3000)
    run.writes(100, 5000, node="n1", outcome=INFO)
    result = check(run, w=4, nodes=["n1", "n2", "n3", "n4"], spare_nodes=["n4"])
    assert result["refused_not_counted"]["minority"] == 100 and result["refused_count"] == 0


def test_a_join_of_unknown_outcome_brings_no_member_in():
    """Seed 10285: the join's start found no member answering (``info``); counting the spare as a
    member made every coordinator 'reach' it, and 55 refusals were counted."""
    run = Run()
    run.nemesis("membership", {"action": "join", "node": "n4", "nodes": ["n4"], "id": 0}, 0, 1000,
                start_outcome=INFO)
    run.writes(100, 5000, node="n1", outcome=INFO)
    result = check(run, w=4, nodes=["n1", "n2", "n3", "n4"], spare_nodes=["n4"])
    assert result["refused_not_counted"]["minority"] == 100 and result["refused_count"] == 0
