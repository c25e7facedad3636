"""Checkers: each takes the test (``test.json``), the history and the run directory and returns
``{"valid": true|false|"unknown", ...evidence}``. They never touch the network (Jepsen's rule).

``check_all`` runs every checker and composes the verdict: any ``false`` makes the run invalid,
else any ``"unknown"`` makes it unknown. A checker that crashes is reported as unknown with the
error, so one broken plot never hides the verdict of the others. Every checker also takes an
``index`` (``history.HistoryIndex``): ``check_all`` hands them one, so what several of them derive
from the history (its pairs, the nemesis ops, the causality analysis) is computed once.
"""

from __future__ import annotations

import importlib
import traceback
from pathlib import Path
from typing import Any

from dynacheck.history import HistoryIndex, Op, gc_paused

#: Checker name -> module under dynacheck.checkers exposing ``check(test, history, run_dir, index=None)``.
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
    results: dict[str, Any] = dict.fromkeys(names)  # in the order named, whatever fails first
    modules: dict[str, Any] = {}
    # Imported before the pause below: what an import makes (matplotlib's modules, for one) would
    # otherwise all be young when the collector comes back, and its first collection scan them.
    for name in names:
        try:
            modules[name] = importlib.import_module(f"dynacheck.checkers.{name}")
        except Exception as exc:  # noqa: BLE001 - reported, never hides the other verdicts
            results[name] = _crashed(exc)
    index = HistoryIndex(history)
    # No cyclic collection while checking: what the index and the checkers build (pairs, versions)
    # is millions of objects that each collection would scan again. The index's data goes before
    # the collector is back on, so its first collection finds little more than the cycles made
    # meanwhile (matplotlib's).
    with gc_paused():
        for name, module in modules.items():
            try:
                results[name] = module.check(test, history, run_dir, index=index)
            except Exception as exc:  # noqa: BLE001 - reported, never hides the other verdicts
                results[name] = _crashed(exc)
        index.release()
    return {"valid": merge_valid([result.get("valid") for result in results.values()]), "checkers": results}


def _crashed(exc: Exception) -> dict[str, Any]:
    """A checker that crashed (or could not be imported): unknown, with the error and where it came from."""
    return {"valid": "unknown", "error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc(limit=5)}
