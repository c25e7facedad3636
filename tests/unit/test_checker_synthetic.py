"""The simulated histories the checkers are tested and benchmarked on: well formed, with every runner field."""

from __future__ import annotations

import pytest

from dynacheck.checkers.convergence import round_verdict
from dynacheck.synthetic import generate


@pytest.fixture(scope="module")
def run() -> tuple[dict, list]:
    # Enough keys that a poll round outlasts the gap between rounds (it once rewound time and overlapped).
    return generate(4_000, seed=2, active_keys=4, key_limit=60, cold_ratio=0.03)


def test_every_completion_follows_its_own_invoke(run):
    _, history = run
    open_ops: dict = {}
    assert [op["index"] for op in history] == list(range(len(history)))
    assert all(a["time"] <= b["time"] for a, b in zip(history, history[1:], strict=False))
    for op in history:
        slot = op["process"] if op["process"] != "nemesis" else op["f"]
        if op["type"] == "invoke":
            assert slot not in open_ops, op
            open_ops[slot] = op
        else:
            invoke = open_ops.pop(slot)
            assert (invoke.get("f"), invoke.get("key"), invoke.get("round"), invoke.get("phase")) == (
                op.get("f"), op.get("key"), op.get("round"), op.get("phase")), (invoke, op)
    assert not open_ops


def test_poll_rounds_do_not_overlap_and_end_converged(run):
    _, history = run
    rounds: dict = {}
    for op in history:
        if op.get("f") == "replica":
            rounds.setdefault(op["round"], []).append(op)
    spans = [(min(op["time"] for op in ops), max(op["time"] for op in ops)) for _, ops in sorted(rounds.items())]
    assert len(spans) >= 2 and all(a[1] < b[0] for a, b in zip(spans, spans[1:], strict=False))
    assert all(round_verdict(rounds[max(rounds)], 3).values())


def test_the_runners_new_fields_are_all_there(run):
    test, history = run
    adds = [op for op in history if op.get("f") == "add" and op["type"] == "ok"]
    assert adds and all(set(op["read_clock"]) == {"vector", "cloud"} for op in adds)
    assert any(op["read_clock"]["vector"] for op in adds)
    assert {op["key"] for op in adds if "-cold-" in op["key"]}
    # Cold keys are never read before the final reads.
    assert not [op for op in history if op.get("f") == "read" and "-cold-" in op["key"] and not op.get("final")]
    snapshots = [(op["node"], op["phase"]) for op in history if op.get("f") == "status" and op["type"] == "ok"]
    assert sorted(snapshots) == sorted((node, phase) for node in test["nodes"] for phase in ("before", "after"))
    assert test["quiet_margin"] == 3.0
    kinds = [entry["fault"] for entry in test["fault_schedule"]]
    assert {"partition", "clock", "disk", "kill"} <= set(kinds)
    assert any(op.get("skipped") for op in history if op["process"] == "nemesis")
    heals = [op["f"] for op in history
             if op["process"] == "nemesis" and op["type"] == "invoke" and op["value"] == "heal"]
    assert sorted(heals) == sorted(f"stop-{kind}" for kind in test["nemesis"])


def test_blind_register_writes_read_nothing():
    _, history = generate(300, seed=1, workload="register", active_keys=3, key_limit=30)
    writes = [op for op in history if op.get("f") == "write" and op["type"] == "ok"]
    assert writes and all(op["read_clock"] == {"vector": {}, "cloud": []} for op in writes)
