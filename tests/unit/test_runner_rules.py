"""How a run's conditions shape its verdict and exit code, and how the interpreter stops: pure
rules and real threads, no cluster."""

from __future__ import annotations

import time

from dynacheck.history import HistoryWriter, read_history
from dynacheck.interpreter import ThreadRuntime
from dynacheck.runner import EXIT_CRASHED, EXIT_INVALID, EXIT_UNKNOWN, EXIT_VALID, exit_code, judge


def results(**verdicts):
    return {"valid": None, "checkers": {name: {"valid": valid} for name, valid in verdicts.items()}}


STARTED_PARTITION = [{"process": "nemesis", "type": "ok", "f": "start-partition", "time": 1}]


def test_diverged_replicas_after_a_failed_heal_prove_nothing():
    judged = judge({"nemesis": ["partition"], "problems": ["healing partition failed: h2: unreachable"]},
                   STARTED_PARTITION, results(siblings=True, convergence=False))
    assert judged["checkers"]["convergence"]["valid"] == "unknown"
    assert judged["checkers"]["convergence"]["undecidable_because"] == ["healing partition failed: h2: unreachable"]
    assert judged["valid"] == "unknown"


def test_lost_writes_stay_invalid_even_when_the_run_crashed_afterwards():
    judged = judge({"nemesis": [], "crashed": "interrupted"}, [], results(siblings=False, convergence=False))
    assert judged["valid"] is False and judged["crashed"] == "interrupted"
    assert exit_code(judged, crashed=True) == EXIT_CRASHED


def test_a_clean_run_keeps_its_verdicts_and_a_fault_that_never_started_is_a_warning():
    judged = judge({"nemesis": ["partition", "kill"]}, STARTED_PARTITION, results(siblings=True, convergence=True))
    assert judged["valid"] is True and exit_code(judged, crashed=False) == EXIT_VALID
    assert judged["warnings"] == ["the kill nemesis never started a fault (is the time limit shorter than the "
                                  "nemesis interval?)"]


def test_exit_codes_follow_the_contract():
    assert exit_code({"valid": False}, crashed=False) == EXIT_INVALID
    assert exit_code({"valid": "unknown"}, crashed=False) == EXIT_UNKNOWN


def test_closing_the_runtime_drops_ops_not_yet_invoked_and_waits_for_those_in_flight(tmp_path):
    history = HistoryWriter(tmp_path / "history.jsonl", clock=time.monotonic_ns)
    executed = []

    def execute_for(thread):
        def execute(op):
            time.sleep(0.3)
            executed.append(op["f"])
            return {"type": "ok"}
        return execute

    runtime = ThreadRuntime(execute_for, history.append)
    runtime.dispatch({"thread": 0, "process": 0, "f": "now", "key": "k", "value": 1, "time": 0})
    runtime.dispatch({"thread": 1, "process": 1, "f": "later", "key": "k", "value": 2,
                      "time": runtime.now() + 60_000_000_000})
    time.sleep(0.1)
    started = time.monotonic()
    runtime.close()
    assert time.monotonic() - started < 5
    assert executed == ["now"]  # finished before close returned; "later" never ran
    history.close()
    ops = read_history(tmp_path / "history.jsonl")
    assert [(op["f"], op["type"]) for op in ops] == [("now", "invoke"), ("now", "ok")]
    assert ops[0]["time"] <= ops[1]["time"]


def test_a_fault_whose_every_start_failed_is_named_with_the_reason():
    history = [{"process": "nemesis", "type": "invoke", "f": "start-netem", "time": 1},
               {"process": "nemesis", "type": "info", "f": "start-netem", "time": 2,
                "error": "h1: Specified qdisc kind is unknown."}]
    judged = judge({"nemesis": ["netem"]}, history, results(siblings=True))
    assert judged["valid"] is True
    assert judged["warnings"] == ["every start of the netem nemesis failed, so the run did not test it: "
                                  "h1: Specified qdisc kind is unknown."]
