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


# -- which mechanism had to work ----------------------------------------------------------------------


def snapshot(received: int = 0, exchanges: int = 0, handoffs: int | None = 0, hinted: int = 0, sent: int = 0) -> dict:
    value = {"anti_entropy": {"exchanges": exchanges, "keys_received": received, "keys_sent": sent,
                              "partitions_in_sync": 0, "coverage": {"pairs_exchanged": 0, "pairs_total": 3}},
             "hinted_keys": hinted}
    if handoffs is not None:
        value["handoffs"] = handoffs
    return value


def healed_run(before: dict[str, dict | None], after: dict[str, dict | None], repaired: bool = True) -> list:
    """Hot key k and cold key cart-cold-0; k diverged at the first poll when ``repaired``, cold never."""
    h = HistoryBuilder()
    h.nemesis("stop-partition", 0, 1)
    for i, (node, value) in enumerate(before.items()):
        h.status(node, "before", 2 + i, value)
    poll_round(h, 1, 10, {"k": {"n1": [A2], "n2": [A1] if repaired else [A2], "n3": [A2]},
                          "cart-cold-0": {"n1": [B1], "n2": [B1], "n3": [B1]}})
    poll_round(h, 2, 100, {"k": {"n1": [A2], "n2": [A2], "n3": [A2]}})
    for i, (node, value) in enumerate(after.items()):
        h.status(node, "after", 200 + i, value)
    return h.history()


def test_keys_are_told_apart_by_whether_they_needed_repair_hot_and_cold():
    h = HistoryBuilder()
    poll_round(h, 1, 0, {"k": {"n1": [A2], "n2": [A1], "n3": [A2]}, "cart-cold-1": {"n1": [A1]},
                         "j": {"n1": [B1], "n2": [B1], "n3": [B1]}, "register-cold-0": {}})
    poll_round(h, 2, 100, {"k": {"n1": [A2], "n2": [A2], "n3": [A2]}, "cart-cold-1": {"n1": [A1], "n2": [A1]},
                           "j": {"n1": [B1], "n2": [A1], "n3": [B1]}})
    poll_round(h, 3, 200, {"cart-cold-1": {"n1": [A1], "n2": [A1], "n3": [A1]}, "j": {"n1": [B1], "n2": [B1],
                                                                                      "n3": [B1]}})
    result = convergence.check(TEST, h.history(), None)
    assert result["valid"] is True  # the verdict rule is unchanged
    assert result["key_fates"] == {"already_converged": {"hot": 0, "cold": 1}, "repaired": {"hot": 1, "cold": 1},
                                   "rediverged": {"hot": 1, "cold": 0}, "still_diverged": {"hot": 0, "cold": 0}}
    assert result["repaired_by"] == "unknown: no node was snapshotted before and after the polls"


def test_no_key_needing_repair_needs_no_mechanism():
    history = healed_run({"n1": snapshot()}, {"n1": snapshot()}, repaired=False)
    result = convergence.check(TEST, history, None)
    assert result["repaired_by"] == "none needed"
    assert result["repair_counters"]["keys_repaired"] == 0


def test_status_deltas_name_anti_entropy_per_node_and_in_total():
    history = healed_run({"n1": snapshot(received=5, exchanges=10), "n2": snapshot(exchanges=3, sent=1)},
                         {"n1": snapshot(received=7, exchanges=14), "n2": snapshot(exchanges=4, sent=2)})
    result = convergence.check(TEST, history, None)
    assert result["repaired_by"] == "anti-entropy"
    assert result["status"]["n1"] == {"snapshots": ["after", "before"], "keys_received": 2, "keys_sent": 0,
                                      "exchanges": 4, "handoffs": 0, "hinted_keys_before": 0, "hinted_keys_after": 0}
    assert result["repair_counters"] == {"keys_repaired": 1, "keys_received": 2, "keys_sent": 1, "exchanges": 5,
                                         "handoffs": 0, "hinted_keys_before": 0, "hinted_keys_after": 0}
    json.dumps(result)


def test_handoffs_or_fewer_hinted_keys_name_hinted_handoff():
    history = healed_run({"n1": snapshot(handoffs=1, hinted=2)}, {"n1": snapshot(handoffs=3, hinted=0)})
    assert convergence.check(TEST, history, None)["repaired_by"] == "hinted handoff"
    # Without a handoffs counter, the hinted keys that went away still tell.
    history = healed_run({"n1": snapshot(handoffs=None, hinted=2)}, {"n1": snapshot(handoffs=None, hinted=0)})
    result = convergence.check(TEST, history, None)
    assert (result["repaired_by"], result["status"]["n1"]["handoffs"]) == ("hinted handoff", None)


def test_both_counters_moving_name_both_mechanisms():
    history = healed_run({"n1": snapshot(received=1, handoffs=0)}, {"n1": snapshot(received=2, handoffs=1)})
    assert convergence.check(TEST, history, None)["repaired_by"] == "anti-entropy and/or hinted handoff"


def test_repair_with_no_counter_moving_is_unexplained():
    history = healed_run({"n1": snapshot(exchanges=1)}, {"n1": snapshot(exchanges=9)})
    assert convergence.check(TEST, history, None)["repaired_by"] == (
        "unexplained: no anti-entropy transfer and no handoff counted")


def test_a_node_that_did_not_answer_a_snapshot_is_left_out_of_the_totals():
    history = healed_run({"n1": snapshot(received=1), "n2": None}, {"n1": snapshot(received=4), "n2": snapshot()})
    result = convergence.check(TEST, history, None)
    assert result["status"]["n2"]["snapshots"] == ["after"]
    assert result["status"]["n2"]["keys_received"] is None
    assert (result["status"]["total"]["nodes"], result["status"]["total"]["nodes_with_both_snapshots"]) == (2, 1)
    assert result["repair_counters"]["keys_received"] == 3


def test_a_simulated_run_says_its_cold_keys_were_repaired_by_the_store():
    test, history = generate(3_000, seed=3, active_keys=4, key_limit=100, cold_ratio=0.05)
    result = convergence.check(test, history, None)
    assert result["valid"] is True
    fates = result["key_fates"]
    assert fates["already_converged"]["cold"] + fates["repaired"]["cold"] > 0
    assert result["repaired_by"] in ("anti-entropy", "hinted handoff", "anti-entropy and/or hinted handoff")
    assert result["status"]["total"]["nodes_with_both_snapshots"] == len(test["nodes"])
