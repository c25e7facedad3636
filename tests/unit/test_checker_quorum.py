"""The quorum checker: with R + W > N, a read after an acknowledged write in a quiet window sees it."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from dynacheck.checkers import quorum
from dynacheck.checkers.quorum import quiet_windows
from dynacheck.synthetic import HistoryBuilder, generate, version

TEST = {"workload": "cart", "n": 3, "r": 2, "w": 2, "nodes": ["n1", "n2", "n3"], "mode": "vclock",
        "quiet_margin": 1.0}
A1, A2 = ("a", 1), ("a", 2)
S = 1000  # ms


def missed_read(h: HistoryBuilder, add_ms: float, read_ms: float, key: str = "k") -> None:
    """Element 1 acknowledged at ``add_ms + 2``; a read invoked at ``read_ms`` lacks it."""
    h.add(0, key, 1, add_ms, add_ms + 2, dot=A1)
    h.read(1, key, [], read_ms, read_ms + 1)


def test_quiet_windows_leave_out_faults_and_the_margin_after_them():
    faults = [("partition", 100, 200), ("kill", 150, 300), ("clock", 1000, 1100)]
    assert quiet_windows(faults, end=2000, margin_ns=50) == [(0, 100), (350, 1000), (1150, 2001)]
    # A fault starting within the margin of the one before leaves no window between them.
    assert quiet_windows([("kill", 0, 10), ("pause", 40, 60)], end=100, margin_ns=50) == []
    assert quiet_windows([], end=5, margin_ns=50) == [(0, 6)]


def test_a_read_after_an_acknowledged_add_in_a_quiet_window_that_lacks_it_is_an_anomaly():
    h = HistoryBuilder()
    h.add(0, "k", 1, 0, 2, dot=A1, node="n1", done_node="n2")  # failed over to n2
    h.read(1, "k", [], 5, 6, node="n1", done_node="n3")
    result = quorum.check(TEST, h.history(), None)
    assert result["valid"] is False
    assert (result["anomaly_count"], result["missing_elements"], result["reads_judged"], result["adds_judged"]) == (
        1, 1, 1, 1)
    assert result["anomalies"] == [{"key": "k", "element": 1, "add_invoke_ms": 0.0, "add_ok_ms": 2.0,
                                    "add_node": "n2", "read_invoke_ms": 5.0, "node": "n3", "final": False,
                                    "window": 0, "version_seen": None}]
    json.dumps(result)


def test_a_read_that_sees_the_add_and_a_read_concurrent_with_it_are_fine():
    h = HistoryBuilder()
    h.add(0, "k", 1, 0, 10, dot=A1)
    h.read(1, "k", [], 5, 12)  # invoked before the add was acknowledged: it may miss it
    h.read(2, "k", [1], 11, 12, versions=[version(A1, [1])])
    result = quorum.check(TEST, h.history(), None)
    assert result["valid"] is True
    assert (result["reads_judged"], result["adds_judged"], result["window_count"]) == (1, 1, 1)
    assert "exercised" not in result


def test_the_anomaly_says_when_the_read_had_seen_the_writes_version():
    h = HistoryBuilder()
    h.add(0, "k", 1, 0, 2, dot=A1)
    # a/2 descends a/1 yet lacks its element: the read reached the write, a merge lost the element.
    h.read(1, "k", [2], 5, 6, versions=[version(A2, [2], seen=[A1])])
    assert quorum.check(TEST, h.history(), None)["anomalies"][0]["version_seen"] is True
    h = HistoryBuilder()
    h.add(0, "k", 1, 0, 2, dot=A1)
    h.read(1, "k", [2], 5, 6, versions=[version(("b", 1), [2])])
    assert quorum.check(TEST, h.history(), None)["anomalies"][0]["version_seen"] is False


def test_a_stale_read_while_a_fault_is_active_is_allowed():
    h = HistoryBuilder()
    h.nemesis("start-partition", 0, 1)
    missed_read(h, 10, 20)
    h.nemesis("stop-partition", 100, 101)
    result = quorum.check(TEST, h.history(), None)
    assert result["valid"] is True
    assert result["reads_in_windows"] == 0
    assert result["exercised"] is False


def test_the_quiet_margin_after_a_fault_is_not_judged_and_the_time_after_it_is():
    h = HistoryBuilder()
    h.nemesis("start-kill", 0, 1)
    h.nemesis("stop-kill", 10, 20)  # the fault ends with the stop's completion at 20 ms
    missed_read(h, 500, 600)  # inside the 1 s margin
    assert quorum.check(TEST, h.history(), None)["valid"] is True
    missed_read(h, 1020, 1030, key="j")  # the window opens at 1020 ms
    result = quorum.check(TEST, h.history(), None)
    assert result["valid"] is False
    assert [(a["key"], a["window"]) for a in result["anomalies"]] == [("j", 0)]  # no window before 0 ms
    assert result["windows"][0]["start_ms"] == 1020.0


def test_a_fault_counts_from_its_start_invoke_so_a_write_spanning_it_is_not_judged():
    h = HistoryBuilder()
    h.add(0, "k", 1, 0, 30, dot=A1)  # completes after the fault's start was invoked
    h.nemesis("start-pause", 20, 40)
    h.nemesis("stop-pause", 50, 60)
    h.read(1, "k", [], 2 * S, 2 * S + 1)
    assert quorum.check(TEST, h.history(), None)["valid"] is True


def test_an_add_and_a_read_in_different_windows_are_not_compared():
    h = HistoryBuilder()
    h.add(0, "k", 1, 0, 2, dot=A1)
    h.nemesis("start-partition", 10, 11)
    h.nemesis("stop-partition", 20, 21)
    h.read(1, "k", [], 2 * S, 2 * S + 1, final=True)
    result = quorum.check(TEST, h.history(), None)
    assert result["valid"] is True
    assert result["window_count"] == 2


def test_skipped_and_failed_starts_are_no_faults_but_a_partial_one_is():
    for completion, expected in [({"outcome": "info", "skipped": "wiped node not refilled", "error": "skipped"}, False),
                                 ({"outcome": "fail", "error": "no such qdisc"}, False),
                                 ({"outcome": "info", "error": "n2: timeout"}, True)]:
        h = HistoryBuilder()
        h.nemesis("start-disk", 5, 6, value={"id": 0, "nodes": ["n2"]}, **completion)
        h.nemesis("stop-disk", 30, 31, value={"id": 0, "nodes": ["n2"]})
        missed_read(h, 10, 20)
        assert quorum.check(TEST, h.history(), None)["valid"] is expected, completion


def test_a_stop_that_failed_leaves_the_fault_active_until_the_heal():
    h = HistoryBuilder()
    h.nemesis("start-kill", 0, 1, value={"id": 0, "nodes": ["n2"]})
    h.nemesis("stop-kill", 10, 11, outcome="info", value={"id": 0, "nodes": ["n2"]}, error="n2: restart failed")
    missed_read(h, 2 * S, 2 * S + 10)
    h.nemesis("stop-kill", 3 * S, 3 * S + 1, value="heal")
    missed_read(h, 5 * S, 5 * S + 10, key="j")
    result = quorum.check(TEST, h.history(), None)
    assert [a["key"] for a in result["anomalies"]] == ["j"]


def test_final_reads_count():
    h = HistoryBuilder()
    h.add(0, "k", 1, 0, 2, dot=A1)
    h.read(1, "k", [], 50, 51, final=True, node="n2")
    result = quorum.check(TEST, h.history(), None)
    assert result["valid"] is False
    assert result["anomalies"][0]["final"] is True


def test_lww_mode_is_judged_too():
    h = HistoryBuilder()
    missed_read(h, 0, 10)
    result = quorum.check({**TEST, "mode": "lww"}, h.history(), None)
    assert (result["valid"], result["applies"], result["mode"]) == (False, True, "lww")


def test_without_overlapping_quorums_the_rule_does_not_apply():
    h = HistoryBuilder()
    missed_read(h, 0, 10)
    result = quorum.check({**TEST, "r": 1, "w": 2}, h.history(), None)
    assert (result["valid"], result["applies"]) == (True, False)
    assert result["reason"] == "R + W = 3 <= N = 3: a read quorum need not meet a write quorum"
    assert quorum.check({"n": 3}, h.history(), None)["applies"] is False


def test_every_acknowledged_blind_write_must_show_in_later_reads():
    h = HistoryBuilder()
    for i in range(5):
        h.add(i, "reg", i, i, i + 1, dot=(f"n{i}", 1), f="write")
    h.read(9, "reg", [0, 1, 2, 3, 4], 10, 11)
    h.read(9, "reg", [0, 1, 3, 4], 12, 13)  # the write of 2 vanished
    result = quorum.check({**TEST, "workload": "register"}, h.history(), None)
    assert [(a["element"], a["read_invoke_ms"]) for a in result["anomalies"]] == [(2, 12.0)]
    assert (result["reads_judged"], result["adds_judged"]) == (2, 5)


def test_the_default_quiet_margin_is_three_seconds():
    h = HistoryBuilder()
    h.nemesis("start-kill", 0, 1)
    h.nemesis("stop-kill", 10, 20)
    missed_read(h, 2 * S, 2 * S + 10)
    test = {key: value for key, value in TEST.items() if key != "quiet_margin"}
    result = quorum.check(test, h.history(), None)
    assert (result["valid"], result["quiet_margin_s"]) == (True, 3.0)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10_000), partitions=st.integers(0, 3))
def test_a_correct_simulated_store_has_no_quorum_anomaly(seed, partitions):
    test, history = generate(600, seed=seed, partitions=partitions, active_keys=3, key_limit=60, quiet_margin=0.01)
    result = quorum.check(test, history, None)
    assert result["valid"] is True, result["anomalies"]
    assert result["reads_judged"] > 0 and result["window_count"] >= 1


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10_000), pick=st.integers(0, 10**6))
def test_dropping_an_element_from_a_judged_read_is_caught(seed, pick):
    test, history = generate(600, seed=seed, partitions=0, active_keys=3, key_limit=60)
    acked = {}
    for op in history:
        if op.get("f") == "add" and op["type"] == "ok":
            acked[op["key"], op["value"]] = op["time"]
    invokes = {}
    candidates = []
    for op in history:
        if op.get("f") != "read" or not isinstance(op.get("process"), int):
            continue
        if op["type"] == "invoke":
            invokes[op["process"]] = op["time"]
        elif op["type"] == "ok":
            candidates += [(op, e) for e in op["value"] if acked.get((op["key"], e), 1 << 62) < invokes[op["process"]]]
    op, element = candidates[pick % len(candidates)]
    op["value"] = [e for e in op["value"] if e != element]
    result = quorum.check(test, history, None)
    assert result["valid"] is False
    assert (op["key"], element) in {(a["key"], a["element"]) for a in result["anomalies"]}


def test_a_heal_with_nothing_left_to_stop_still_keeps_the_window_shut():
    h = HistoryBuilder()
    h.nemesis("start-kill", 0, 1, value={"id": 0})
    h.nemesis("stop-kill", 10, 11, value={"id": 0})
    h.nemesis("stop-pause", 1500, 2000, value="heal")  # no pause was active, yet it acted for 500 ms
    missed_read(h, 2500, 2600)  # 1.5 s after the kill ended, but within the margin after the heal
    assert quorum.check(TEST, h.history(), None)["valid"] is True
    missed_read(h, 3000, 3010, key="j")
    assert [a["key"] for a in quorum.check(TEST, h.history(), None)["anomalies"]] == ["j"]


def cut_off_history(node: str, f: str = "write", mode: str = "one") -> list[dict]:
    grudge = {"one": {"n1": ["n2", "n3"], "n2": ["n1"], "n3": ["n1"]},
              "bridge": {"n1": [], "n2": ["n3"], "n3": ["n2"]}}[mode]
    ops = [{"process": "nemesis", "type": "invoke", "f": "start-partition", "value": {"mode": mode, "grudge": grudge},
            "time": 1_000},
           {"process": "nemesis", "type": "ok", "f": "start-partition", "value": {}, "time": 2_000},
           {"process": 0, "type": "invoke", "f": f, "key": "k", "value": 7, "node": node, "time": 3_000},
           {"process": 0, "type": "ok", "f": f, "key": "k", "value": 7 if f == "write" else [7], "node": node,
            "time": 4_000},
           {"process": "nemesis", "type": "invoke", "f": "stop-partition", "value": {}, "time": 5_000},
           {"process": "nemesis", "type": "ok", "f": "stop-partition", "value": {}, "time": 6_000}]
    return [{"index": index, **op} for index, op in enumerate(ops)]


CUT_TEST = {"n": 3, "r": 2, "w": 2, "nodes": ["n1", "n2", "n3"], "quiet_margin": 3.0}


def test_a_write_acknowledged_by_a_node_cut_off_from_every_replica_is_invalid():
    result = quorum.check(CUT_TEST, cut_off_history("n1"))
    assert result["valid"] is False and result["cut_off_count"] == 1
    assert result["cut_off"][0]["reachable"] == ["n1"] and result["cut_off"][0]["needed"] == 2


def test_a_read_answered_by_a_cut_off_node_is_invalid_and_the_majority_side_is_fine():
    assert quorum.check(CUT_TEST, cut_off_history("n1", f="read"))["cut_off_count"] == 1
    majority = quorum.check(CUT_TEST, cut_off_history("n2"))
    assert majority["cut_off_count"] == 0 and majority["cut_off_judged"] == 1 and majority["valid"] is True


def test_a_bridge_node_reaches_both_halves_and_each_half_reaches_the_rest_through_it():
    for node in ("n1", "n2", "n3"):
        assert quorum.check(CUT_TEST, cut_off_history(node, mode="bridge"))["cut_off_count"] == 0
    assert quorum.within_two_hops({"n1": [], "n2": ["n3"], "n3": ["n2"]}, "n2") == {"n1", "n2", "n3"}


def test_a_node_the_grudge_does_not_name_is_reachable_a_member_that_joined_after_the_plan():
    # Found by ``dynacheck sim`` (seed 9 of a swarm with partition and membership): n4 joined after
    # the partition of n1 was planned over n1..n3, so no rule drops n4's packets and n1 wrote to it.
    joined = {**CUT_TEST, "spare_nodes": ["n4", "n5"]}
    result = quorum.check(joined, cut_off_history("n1"))
    assert result["cut_off_count"] == 0 and result["valid"] is True
    grudge = {"n1": ["n2", "n3"], "n2": ["n1"], "n3": ["n1"]}
    assert quorum.within_two_hops(grudge, "n1", {"n4"}) == {"n1", "n2", "n3", "n4"}  # n2 and n3 through n4


def test_the_cut_off_rule_holds_whatever_r_and_w():
    result = quorum.check({**CUT_TEST, "r": 1, "w": 1}, cut_off_history("n1"))
    assert result["applies"] is False and result["cut_off_count"] == 0  # one node suffices for W=1
    result = quorum.check({**CUT_TEST, "r": 1, "w": 2}, cut_off_history("n1"))
    assert result["applies"] is False and result["valid"] is False and result["cut_off_count"] == 1


def test_a_later_partition_replaces_the_rules_in_force_and_any_stop_flushes_them_all():
    one = {"mode": "one", "grudge": {"n1": ["n2", "n3"], "n2": ["n1"], "n3": ["n1"]}, "id": 0}
    bridge = {"mode": "bridge", "grudge": {"n1": [], "n2": ["n3"], "n3": ["n2"]}, "id": 1}
    ops = [("invoke", "start-partition", one, 1), ("ok", "start-partition", {}, 2),
           ("invoke", "start-partition", bridge, 10), ("ok", "start-partition", {}, 11),
           ("invoke", "stop-partition", one, 20), ("ok", "stop-partition", {}, 21)]
    history = [{"process": "nemesis", "type": kind, "f": f, "value": value, "time": ms * 1_000_000}
               for kind, f, value, ms in ops]
    assert quorum.partition_intervals(history) == [(2_000_000, 10_000_000, one["grudge"]),
                                                   (11_000_000, 20_000_000, bridge["grudge"])]
