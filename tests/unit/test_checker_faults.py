"""The faults checker: the planned fault schedule against the nemesis ops that ran."""

from __future__ import annotations

import json

from dynacheck.checkers import faults
from dynacheck.checkers.faults import active_intervals, max_overlap, read_nemesis
from dynacheck.synthetic import MS, HistoryBuilder, generate


def planned(id_: int, fault: str, start_ms: float, stop_ms: float, **plan) -> dict:
    return {"id": id_, "fault": fault, "start": int(start_ms * MS), "stop": int(stop_ms * MS),
            "plan": {"id": id_, **plan}}


SCHEDULE = [planned(0, "partition", 100, 300, isolated=["n1"]), planned(1, "kill", 200, 400, nodes=["n2"]),
            planned(2, "disk", 500, 600, nodes=["n3"]), planned(3, "netem", 700, 800),
            planned(4, "pause", 5000, 5100, nodes=["n1"])]


def run_of_schedule() -> HistoryBuilder:
    """The partition ran late, the kill overlapped it, the disk fault was skipped, netem failed and the
    pause was planned after the run's end; the final heal stops every kind."""
    h = HistoryBuilder()
    h.nemesis("start-partition", 104, 105, value={"id": 0, "isolated": ["n1"]})
    h.nemesis("start-kill", 210, 230, value={"id": 1, "nodes": ["n2"]})
    h.nemesis("stop-partition", 310, 311, value={"id": 0, "isolated": ["n1"]})
    h.nemesis("stop-kill", 400, 450, value={"id": 1, "nodes": ["n2"]})
    reason = "the last wiped node is not refilled yet"
    h.nemesis("start-disk", 500, 501, outcome="info", value={"id": 2, "nodes": ["n3"]}, skipped=reason,
              error=f"skipped: {reason}")
    h.nemesis("stop-disk", 600, 601, value={"id": 2, "nodes": ["n3"]})
    h.nemesis("start-netem", 700, 702, outcome="info", value={"id": 3}, error="n1: Specified qdisc kind is unknown")
    h.nemesis("stop-netem", 800, 801, value={"id": 3})
    for i, kind in enumerate(("partition", "kill", "disk", "netem", "pause")):
        h.nemesis(f"stop-{kind}", 1000 + 10 * i, 1001 + 10 * i, value="heal")
    return h


def test_each_planned_fault_is_reported_as_it_went():
    result = faults.check({"fault_schedule": SCHEDULE}, run_of_schedule().history(), None)
    assert result["valid"] is True
    rows = {row["id"]: row for row in result["faults"]}
    assert {id_: row["status"] for id_, row in rows.items()} == {
        0: "ran", 1: "ran", 2: "skipped", 3: "failed", 4: "never_started"}
    assert rows[0] == {"id": 0, "fault": "partition", "planned_start_ms": 100.0, "planned_stop_ms": 300.0,
                       "status": "ran", "start_ms": 104.0, "started_ms": 105.0, "stop_ms": 311.0,
                       "stopped_by": "schedule", "start_delay_ms": 4.0, "stop_delay_ms": 11.0}
    assert rows[2]["reason"] == "the last wiped node is not refilled yet"
    assert rows[3]["error"] == "n1: Specified qdisc kind is unknown"
    assert (result["planned_count"], result["run_count"], result["ran_count"], result["never_started_count"]) == (
        5, 4, 2, 1)
    assert result["by_kind"]["disk"] == {"planned": 1, "ran": 0, "no_effect": 0, "skipped": 1, "failed": 0,
                                         "unknown": 0, "never_started": 0, "unplanned": 0}
    assert (result["max_start_delay_ms"], result["median_start_delay_ms"]) == (10.0, 4.0)
    json.dumps(result)


def test_overlapping_faults_of_different_kinds_are_measured():
    result = faults.check({"fault_schedule": SCHEDULE}, run_of_schedule().history(), None)
    assert (result["max_active"], result["max_active_at_ms"], result["max_active_kinds"]) == (
        2, 210.0, ["kill", "partition"])
    assert result["overlap_ms"] == 311 - 210
    # netem's partial start counts as active (it may have done something), until its stop.
    assert ("netem", 700 * MS, 801 * MS) in active_intervals(read_nemesis(run_of_schedule().history()).faults, 0)


def test_what_did_not_go_to_plan_is_a_warning_not_a_failure():
    result = faults.check({"fault_schedule": SCHEDULE, "nemesis": ["partition", "kill", "disk", "netem", "pause"]},
                          run_of_schedule().history(), None)
    assert result["warnings"][0] == "3 of 5 planned faults never ran (1 failed, 1 never started, 1 skipped)"
    assert "no planned disk fault ran, so the run did not test it: the last wiped node is not refilled yet" in (
        result["warnings"])
    assert any(w.startswith("no planned pause fault ran") for w in result["warnings"])


def test_a_fault_left_active_is_stopped_by_the_heal():
    h = HistoryBuilder()
    h.nemesis("start-kill", 0, 1, value={"id": 0, "nodes": ["n2"]})
    h.nemesis("stop-kill", 50, 51, value="heal")
    result = faults.check({"fault_schedule": [planned(0, "kill", 0, 100, nodes=["n2"])]}, h.history(), None)
    assert result["faults"][0]["stopped_by"] == "heal"
    assert result["faults"][0]["stop_delay_ms"] == -49.0
    assert result["warnings"] == []


def test_a_fault_never_stopped_is_active_to_the_end_and_warned_about():
    h = HistoryBuilder()
    h.nemesis("start-pause", 0, 1, value={"id": 0})
    h.nemesis("stop-pause", 10, 11, outcome="info", value={"id": 0}, error="n1: no such process")
    h.add(0, "k", 1, 20, 30)
    log = read_nemesis(h.history())
    assert active_intervals(log.faults, 30 * MS) == [("pause", 0, 30 * MS)]
    assert log.faults[0].stop_errors == ["n1: no such process"]
    result = faults.check({}, h.history(), None)
    assert result["warnings"] == ["1 faults were never stopped, not even by the final heal: pause (id 0)"]


def test_without_a_schedule_the_faults_that_ran_are_reported():
    h = HistoryBuilder()
    h.nemesis("start-partition", 0, 1)
    h.nemesis("stop-partition", 10, 11)
    h.nemesis("start-clock", 20, 21)
    h.nemesis("stop-clock", 30, 31)
    result = faults.check({"nemesis": ["partition", "clock", "kill"]}, h.history(), None)
    assert result["valid"] is True
    assert result["planned_count"] is None
    assert [(row["fault"], row["status"], row["start_ms"], row["stop_ms"]) for row in result["faults"]] == [
        ("partition", "ran", 0.0, 11.0), ("clock", "ran", 20.0, 31.0)]
    assert result["max_active"] == 1
    assert result["warnings"] == ["the kill nemesis never ran a fault"]
    assert "note" in result


def test_plans_without_ids_are_matched_in_order_per_kind():
    schedule = [{"fault": "clock", "start": 0, "stop": 10 * MS, "plan": "bump"},
                {"fault": "clock", "start": 20 * MS, "stop": 30 * MS, "plan": "strobe"}]
    h = HistoryBuilder()
    h.nemesis("start-clock", 1, 2, value="bump")
    h.nemesis("stop-clock", 11, 12, value="bump")
    result = faults.check({"fault_schedule": schedule}, h.history(), None)
    assert [row["status"] for row in result["faults"]] == ["ran", "never_started"]
    assert result["faults"][0]["start_delay_ms"] == 1.0


def test_a_start_the_schedule_did_not_plan_is_counted_apart():
    h = HistoryBuilder()
    h.nemesis("start-kill", 0, 1, value={"id": 7})
    h.nemesis("stop-kill", 5, 6, value={"id": 7})
    result = faults.check({"fault_schedule": [planned(0, "kill", 0, 5)]}, h.history(), None)
    assert (result["unplanned_count"], result["never_started_count"]) == (1, 1)
    assert result["faults"][-1]["unplanned"] is True
    assert "1 faults ran that the schedule did not plan" in result["warnings"]


def test_two_faults_of_one_kind_at_once_are_told_apart_by_id():
    h = HistoryBuilder()
    h.nemesis("start-kill", 0, 1, value={"id": 0, "nodes": ["n1"]})
    h.nemesis("start-kill", 10, 11, value={"id": 1, "nodes": ["n2"]})  # a late stop let them overlap
    h.nemesis("stop-kill", 20, 21, value={"id": 0, "nodes": ["n1"]})
    h.nemesis("stop-kill", 30, 31, value={"id": 1, "nodes": ["n2"]})
    result = faults.check({"fault_schedule": [planned(0, "kill", 0, 15), planned(1, "kill", 9, 25)]},
                          h.history(), None)
    assert result["valid"] is True
    assert [(row["id"], row["stop_ms"]) for row in result["faults"]] == [(0, 21.0), (1, 31.0)]
    assert result["max_active"] == 2
    assert "2 kill faults were active at once (ids [0, 1]): the schedule promises one per kind" in result["warnings"]


def test_a_malformed_nemesis_history_is_invalid():
    h = HistoryBuilder()
    h.nemesis("start-partition", 0, 1)
    history = h.history()
    history.append({"index": 2, "time": 5 * MS, "process": "nemesis", "type": "ok", "f": "stop-partition"})
    history.append({"index": 3, "time": 6 * MS, "process": "nemesis", "type": "invoke", "f": "reboot"})
    result = faults.check({}, history, None)
    assert result["valid"] is False
    assert result["malformed"] == ["stop-partition completed (ok) at 5.0 ms without an invoke",
                                   "nemesis op 'reboot' at 6.0 ms is neither start-<fault> nor stop-<fault>"]
    assert faults.check({"fault_schedule": [{"fault": "kill"}]}, [], None)["valid"] is False


def test_max_overlap_counts_only_time_with_two_or_more_active():
    intervals = [("a", 0, 10), ("b", 5, 20), ("c", 8, 9), ("d", 30, 40)]
    assert max_overlap(intervals) == (3, 8, ["a", "b", "c"], 5)
    assert max_overlap([]) == (0, None, [], 0)


def test_a_simulated_run_plans_overlapping_faults_and_misses_some():
    test, history = generate(2_000, seed=4, active_keys=4, key_limit=100)
    result = faults.check(test, history, None)
    assert result["valid"] is True
    assert (result["max_active"], result["skipped_count"], result["never_started_count"]) == (2, 1, 1)
    assert result["ran_count"] == result["planned_count"] - 2
    assert result["warnings"][0] == (
        f"2 of {result['planned_count']} planned faults never ran (1 never started, 1 skipped)")
