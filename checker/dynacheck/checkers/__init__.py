"""Checkers: each takes the test (``test.json``), the history and the run directory and returns
``{"valid": true|false|"unknown", ...evidence}``. They never touch the network (Jepsen's rule).

``check_all`` runs every checker and composes the verdict: any ``false`` makes the run invalid,
else any ``"unknown"`` makes it unknown. A checker that crashes is reported as unknown with the
error, so one broken plot never hides the verdict of the others.
"""

from __future__ import annotations

import importlib
import traceback
from pathlib import Path
from typing import Any

from dynacheck.history import Op

#: Checker name -> module under dynacheck.checkers exposing ``check(test, history, run_dir)``.
CHECKERS = ("siblings", "convergence", "causality", "quorum", "availability", "replicas", "faults", "perf", "timeline",
            "graphs")


def merge_valid(verdicts: list[Any]) -> bool | str:
    """Jepsen's merge: false beats unknown beats true; no verdicts at all is unknown."""
    if any(v is False for v in verdicts):
        return False
    if not verdicts or any(v is not True for v in verdicts):
        return "unknown"
    return True


def check_all(test: dict[str, Any], history: list[Op], run_dir: Path | None,
              names: tuple[str, ...] = CHECKERS) -> dict[str, Any]:
    """Run the named checkers; returns ``{"valid", "checkers": {name: result}}``."""
    results: dict[str, Any] = {}
    for name in names:
        try:
            module = importlib.import_module(f"dynacheck.checkers.{name}")
            results[name] = module.check(test, history, run_dir)
        except Exception as exc:  # noqa: BLE001 - reported, never hides the other verdicts
            results[name] = {"valid": "unknown", "error": f"{type(exc).__name__}: {exc}",
                             "trace": traceback.format_exc(limit=5)}
    return {"valid": merge_valid([result.get("valid") for result in results.values()]), "checkers": results}
