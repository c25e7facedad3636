"""``dynacheck sim``: real nodes in one process on simulated time (the CLI, as a user runs it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SIM = [sys.executable, "-m", "dynacheck", "sim"]


def run_sim(args: list[str], store: Path, hash_seed: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    return subprocess.run([*SIM, *args, "--store", str(store), "--format", "json"], capture_output=True, text=True,
                          env=env, timeout=600)


def test_the_same_seed_gives_the_same_history_byte_for_byte_in_another_process(tmp_path):
    # Two processes with different hash seeds (the command fixes its own): the same history.
    args = ["--seed", "11", "--nemesis", "partition,kill,pause,clock,disk,power", "--time-limit", "15"]
    first, second = run_sim(args, tmp_path / "a", "1"), run_sim(args, tmp_path / "b", "2")
    assert first.returncode == second.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    one = (tmp_path / "a" / "latest" / "history.jsonl").read_bytes()
    two = (tmp_path / "b" / "latest" / "history.jsonl").read_bytes()
    assert one == two
    history = [json.loads(line) for line in one.splitlines()]
    started = [op["f"] for op in history if op.get("process") == "nemesis" and op["type"] == "ok"
               and op["f"].startswith("start-")]
    assert len(started) >= 2  # faults happened, so the replay covers them
    assert sum(1 for op in history if isinstance(op.get("process"), int) and op["type"] == "ok") > 50


def test_a_simulated_run_is_stored_like_a_real_one_and_analyze_agrees(tmp_path):
    done = run_sim(["--seed", "4", "--nemesis", "kill,partition", "--time-limit", "10"], tmp_path, "0")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    report = json.loads(done.stdout)
    run_dir = Path(report["run_dir"])
    assert (tmp_path / "latest").resolve() == run_dir.resolve()
    for name in ("test.json", "history.jsonl", "results.json", "timeline.html"):
        assert (run_dir / name).exists(), name
    test = json.loads((run_dir / "test.json").read_text())
    assert test["simulated"] is True and test["seed"] == 4 and test["daemon_errors"] == []
    assert report["checkers"]["faults"]["valid"] is True
    again = subprocess.run([sys.executable, "-m", "dynacheck", "analyze", str(run_dir), "--format", "json"],
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and json.loads(again.stdout)["valid"] is True


def test_a_seed_search_prints_its_rate_and_keeps_only_the_runs_that_were_not_valid(tmp_path):
    done = subprocess.run([*SIM, "--seeds", "6", "--time-limit", "8", "--jobs", "2", "--store", str(tmp_path),
                           "--format", "json"], capture_output=True, text=True, timeout=600)
    summary = json.loads(done.stdout)
    assert summary["runs"] == 6 and summary["runs_per_minute"] > 0
    assert done.returncode == (0 if not summary["not_valid"] else 1 if any(
        s["valid"] is False for s in summary["not_valid"]) else 2)
    kept = [path for path in tmp_path.glob("*/*") if path.is_dir()]
    assert len(kept) == len(summary["not_valid"])


def test_a_fault_the_simulator_cannot_inject_is_a_usage_error(tmp_path):
    done = subprocess.run([*SIM, "--nemesis", "corrupt", "--store", str(tmp_path)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2 and "cannot inject corrupt" in done.stderr


def _reconcile_keeping_one_of_concurrent_versions(*sibling_sets):
    """A planted bug, in a copy of ``reconcile``: of versions no other one supersedes, only the one
    with the highest dot survives (concurrent writes overwrite each other, as in a naive store)."""
    by_dot = {}
    for siblings in sibling_sets:
        for sibling in siblings:
            by_dot.setdefault(sibling.dot, sibling)
    survivors = [s for s in by_dot.values()
                 if not any(other.dot != s.dot and other.supersedes(s) for other in by_dot.values())]
    return tuple(sorted(survivors, key=lambda s: s.dot)[-1:])


#: Seeds a search needs to find the planted bug (each run: 10 simulated seconds, no fault).
PLANTED_BUG_SEEDS = 5


def test_a_search_finds_a_planted_reconciliation_bug_within_a_few_seeds(tmp_path, monkeypatch):
    import dynamod.core.quorum
    import dynamod.core.versions
    from dynacheck.runner import Options
    from dynacheck.sim.command import VERDICT_CHECKERS
    from dynacheck.sim.run import run_sim

    monkeypatch.setattr(dynamod.core.versions, "reconcile", _reconcile_keeping_one_of_concurrent_versions)
    monkeypatch.setattr(dynamod.core.quorum, "reconcile", _reconcile_keeping_one_of_concurrent_versions)
    found = []
    for seed in range(PLANTED_BUG_SEEDS):
        options = Options(workload="cart", time_limit=10, concurrency=5, rate=10, seed=seed, local=3,
                          store=str(tmp_path))
        _, results, code = run_sim(options, None, checkers=VERDICT_CHECKERS)
        if results["valid"] is False:
            found.append((seed, results["checkers"]["siblings"]))
            break
    assert found, f"the planted bug survived {PLANTED_BUG_SEEDS} seeds"
    seed, siblings = found[0]
    assert siblings["valid"] is False and siblings["lost_count"] > 0  # acknowledged adds it lost, named


def test_no_node_code_reads_the_real_clock_in_a_simulated_run(tmp_path, monkeypatch):
    # Real time would make a run depend on the machine (and its history on the CPU's speed): every
    # clock a node reads must be the simulated one it was given.
    import time
    import traceback

    from dynacheck.runner import Options
    from dynacheck.sim.command import VERDICT_CHECKERS
    from dynacheck.sim.run import run_sim

    readers = []
    for name in ("time", "monotonic", "perf_counter", "monotonic_ns", "time_ns"):
        real = getattr(time, name)

        def guarded(*args, real=real, name=name):
            caller = traceback.extract_stack(limit=2)[0]
            if "/dynamod/" in caller.filename:
                readers.append(f"{name} from {caller.filename}:{caller.lineno}")
            return real(*args)

        monkeypatch.setattr(time, name, guarded)
    options = Options(workload="cart", nemesis=("kill", "partition", "clock"), time_limit=8, seed=2, local=3,
                      rate=10, concurrency=5, store=str(tmp_path), nemesis_interval=1.0, nemesis_duration=1.0)
    _, results, _ = run_sim(options, None, checkers=VERDICT_CHECKERS)
    assert results["valid"] is True
    assert readers == []
