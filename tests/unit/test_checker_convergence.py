"""The convergence checker and the runner's stopping rule, on hand-written and simulated polls."""

from __future__ import annotations

import json

from dynacheck.checkers import convergence
from dynacheck.checkers.convergence import diverged_detail, round_verdict
from dynacheck.synthetic import HistoryBuilder, generate, version

NODES = ["n1", "n2", "n3", "n4"]
TEST = {"n": 3, "nodes": NODES}
A1 = version(("a", 1), [1])
A2 = version(("a", 2), [1, 2], seen=[("a", 1)])
B1 = version(("b", 1), [3])


def poll_round(h: HistoryBuilder, round_: int, at_ms: float, copies: dict[str, dict[str, list | None]]) -> None:
    """Poll every key of ``copies`` ({key: {node: siblings or None for a failed poll}}) on every node."""
    for key, by_node in copies.items():
        for i, node in enumerate(NODES):
            h.poll(round_, key, node, by_node.get(node, []), at_ms + i)


def ops_of(h: HistoryBuilder, round_: int) -> list:
    return [op for op in h.history() if op.get("round") == round_]


def test_a_key_held_identically_by_n_nodes_has_converged():
    h = HistoryBuilder()
    poll_round(h, 1, 0, {"k": {"n1": [A2], "n2": [A2], "n3": [A2]}})  # n4 is not a replica: []
    assert round_verdict(ops_of(h, 1), 3) == {"k": True}


def test_different_sibling_sets_have_not_converged():
    h = HistoryBuilder()
    poll_round(h, 1, 0, {"k": {"n1": [A2], "n2": [A1], "n3": [A2]},
                         "j": {"n1": [A1, B1], "n2": [B1, A1], "n3": [A1, B1]}})
    assert round_verdict(ops_of(h, 1), 3) == {"k": False, "j": True}  # sibling order does not matter


def test_a_tombstone_is_not_the_same_copy_as_the_live_version():
    h = HistoryBuilder()
    poll_round(h, 1, 0, {"k": {"n1": [A1], "n2": [A1], "n3": [{**A1, "deleted": True}]}})
    assert round_verdict(ops_of(h, 1), 3) == {"k": False}


def test_a_node_that_did_not_answer_forbids_calling_the_key_converged():
    h = HistoryBuilder()
    poll_round(h, 1, 0, {"k": {"n1": [A2], "n2": [A2], "n3": [A2], "n4": None}})
    assert round_verdict(ops_of(h, 1), 3) == {"k": False}
    h = HistoryBuilder()
    h.poll(1, "k", "n1", [A2], 0)  # n1 answered; the others were never polled
    assert round_verdict(ops_of(h, 1), 1) == {"k": True}
    assert round_verdict(ops_of(h, 1), 1, nodes=NODES) == {"k": False}


def test_a_poll_without_its_answer_is_not_an_answer():
    h = HistoryBuilder()
    poll_round(h, 1, 0, {"k": {"n1": [A2], "n2": [A2], "n3": [A2]}})
    ops = [op for op in ops_of(h, 1) if not (op["node"] == "n2" and op["type"] == "ok")]
    assert round_verdict(ops, 3) == {"k": False}


def test_fewer_copies_than_the_replication_factor_have_not_converged():
    h = HistoryBuilder()
    poll_round(h, 1, 0, {"k": {"n1": [A2], "n2": [A2]}})
    assert round_verdict(ops_of(h, 1), 3) == {"k": False}
    assert round_verdict(ops_of(h, 1), 2) == {"k": True}


def test_a_key_no_node_holds_has_converged():
    h = HistoryBuilder()
    poll_round(h, 1, 0, {"k": {}})
    assert round_verdict(ops_of(h, 1), 3) == {"k": True}


def test_diverged_detail_names_each_nodes_dots():
    h = HistoryBuilder()
    poll_round(h, 1, 0, {"k": {"n1": [A2], "n2": [A1, B1], "n3": [{**A2, "deleted": True}], "n4": None}})
    assert diverged_detail(ops_of(h, 1), "k") == {"n1": ["a/2"], "n2": ["a/1", "b/1"], "n3": ["a/2 (deleted)"],
                                                  "n4": "no answer"}


def test_convergence_after_the_final_heal_is_timed_from_it():
    h = HistoryBuilder()
    h.nemesis("start-partition", 0, 1)
    h.nemesis("stop-partition", 100, 110)  # the final heal completes at 110 ms
    poll_round(h, 1, 200, {"k": {"n1": [A2], "n2": [A1], "n3": [A2]}, "j": {}})
    poll_round(h, 2, 300, {"k": {"n1": [A2], "n2": [A2], "n3": [A2]}, "j": {}})
    result = convergence.check(TEST, h.history(), None)
    assert result["valid"] is True
    assert result["converged_round"] == 2
    assert result["time_to_converge_ms"] == 300 + 3 + 1 - 110  # last op of round 2: n4's answer at 304 ms
    assert [r["converged"] for r in result["round_summary"]] == [1, 2]
    json.dumps(result)


def test_without_nemesis_time_runs_from_the_first_poll():
    h = HistoryBuilder()
    poll_round(h, 1, 50, {"k": {"n1": [A1], "n2": [A1], "n3": [A1]}})
    result = convergence.check(TEST, h.history(), None)
    assert (result["valid"], result["converged_round"], result["time_to_converge_ms"]) == (True, 1, 4.0)
    assert result["measured_from"] == "first poll"


def test_rounds_that_repoll_only_diverged_keys_still_converge():
    h = HistoryBuilder()
    poll_round(h, 1, 0, {"k": {"n1": [A2], "n2": [A1], "n3": [A2]}, "j": {"n1": [B1], "n2": [B1], "n3": [B1]}})
    poll_round(h, 2, 100, {"k": {"n1": [A2], "n2": [A2], "n3": [A2]}})
    result = convergence.check(TEST, h.history(), None)
    assert (result["valid"], result["converged_round"]) == (True, 2)


def test_keys_still_diverged_in_their_last_round_are_named_with_each_nodes_dots():
    h = HistoryBuilder()
    poll_round(h, 1, 0, {"k": {"n1": [A2], "n2": [A1], "n3": [A2]}, "j": {"n1": [B1], "n2": [B1], "n3": [B1]}})
    poll_round(h, 2, 100, {"k": {"n1": [A2], "n2": [A1], "n3": [A2]}, "j": {"n1": [B1], "n2": [B1], "n3": [B1]}})
    result = convergence.check(TEST, h.history(), None)
    assert result["valid"] is False
    assert result["diverged_count"] == 1
    assert result["diverged"] == [{"key": "k", "round": 2,
                                   "nodes": {"n1": ["a/2"], "n2": ["a/1"], "n3": ["a/2"], "n4": []}}]


def test_a_key_that_diverges_again_counts_from_its_last_convergence():
    h = HistoryBuilder()
    poll_round(h, 1, 0, {"k": {"n1": [A1], "n2": [A1], "n3": [A1]}})
    poll_round(h, 2, 100, {"k": {"n1": [A2], "n2": [A1], "n3": [A2]}})
    poll_round(h, 3, 200, {"k": {"n1": [A2], "n2": [A2], "n3": [A2]}})
    assert convergence.check(TEST, h.history(), None)["converged_round"] == 3


def test_no_polls_is_unknown():
    h = HistoryBuilder()
    h.add(0, "k", 1, 0, 1)
    assert convergence.check(TEST, h.history(), None)["valid"] == "unknown"


def test_a_simulated_run_converges_after_its_final_heal():
    test, history = generate(1_500, seed=3, active_keys=4, key_limit=100)
    result = convergence.check(test, history, None)
    assert result["valid"] is True
    assert result["rounds"] >= 2  # the first round, right after the heal, still saw hinted copies
    assert result["time_to_converge_ms"] > 0
