"""A run's verdict from its checkers' results, the CONTRACT exit codes, and ``dynacheck analyze``
(re-checking a stored run). Kept apart from the runner so that re-checking imports nothing that
drives a cluster: the runner's imports (SSH, deployment, certificates) cost ``dynacheck analyze``
about a quarter of a second."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dynacheck import store
from dynacheck.checkers import check_all, merge_valid
from dynacheck.history import INVOKE, NEMESIS, OK, Op

EXIT_VALID, EXIT_INVALID, EXIT_UNKNOWN, EXIT_CRASHED = 0, 1, 2, 3


def exit_code(results: dict[str, Any], crashed: bool) -> int:
    """CONTRACT exit codes: 0 valid, 1 invalid, 2 unknown, 3 crashed."""
    if crashed:
        return EXIT_CRASHED
    return {True: EXIT_VALID, False: EXIT_INVALID}.get(results.get("valid"), EXIT_UNKNOWN)


def judge(test: dict[str, Any], history: list[Op], results: dict[str, Any]) -> dict[str, Any]:
    """The verdict given how the run went: when it crashed or a fault could not be healed, replicas
    that disagree prove nothing (convergence becomes unknown); a selected fault that never started
    is a warning (the run did not test it)."""
    conditions = ([f"crashed: {test['crashed']}"] if test.get("crashed") else []) + list(test.get("problems") or [])
    convergence = results["checkers"].get("convergence", {})
    if conditions and convergence.get("valid") is False:
        convergence["valid"] = "unknown"
        convergence["undecidable_because"] = conditions
    starts = [op for op in history if op.get("process") == NEMESIS and str(op.get("f")).startswith("start-")
              and op["type"] != INVOKE]
    started = {op["f"].removeprefix("start-") for op in starts if op["type"] == OK}
    failed = {op["f"].removeprefix("start-"): op.get("error", "") for op in starts if op["type"] != OK}
    warnings = [f"every start of the {fault} nemesis failed, so the run did not test it: {failed[fault]}"
                if fault in failed else
                f"the {fault} nemesis never started a fault (is the time limit shorter than the nemesis interval?)"
                for fault in test.get("nemesis", []) if fault not in started]
    if warnings:
        results["warnings"] = warnings
    if test.get("crashed"):
        results["crashed"] = test["crashed"]
    results["valid"] = merge_valid([result.get("valid") for result in results["checkers"].values()])
    return results


def analyze(run_dir: Path) -> tuple[dict[str, Any], int]:
    """Re-check a stored run without a cluster; rewrites its results.json."""
    test, history, _ = store.load_run(run_dir)
    results = judge(test, history, check_all(test, history, run_dir))
    store.save_json(run_dir / "results.json", results)
    return results, exit_code(results, bool(test.get("crashed")))
