"""The store of checker runs (CONTRACT "Checker runs"): ``store/<test-name>/<YYYYmmddTHHMMSS>/`` per run,
``store/latest`` a relative symlink to the newest one. Jepsen's ``store/`` layout, kept small.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from dynacheck.history import Op, read_history

TIMESTAMP_FORMAT = "%Y%m%dT%H%M%S"
LATEST = "latest"
#: A run directory's name: its start time, plus ``-N`` when two runs started in the same second.
RUN_NAME = re.compile(r"^\d{8}T\d{6}(-\d+)?$")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class RunSummary:
    """One stored run as the index shows it; ``valid`` is ``"incomplete"`` when it has no results yet."""

    test_name: str
    timestamp: str
    path: Path
    valid: bool | str


def safe_test_name(test_name: str) -> str:
    """``test_name`` as one path segment: anything but letters, digits, ``.``, ``_`` and ``-`` becomes ``-``."""
    name = _UNSAFE.sub("-", test_name).strip(".-")
    return name or "test"


def new_run_dir(store: Path, test_name: str, now: datetime) -> Path:
    """Create and return a fresh ``store/<test-name>/<timestamp>`` (``-2``, ``-3``... when it exists)."""
    parent = store / safe_test_name(test_name)
    parent.mkdir(parents=True, exist_ok=True)
    stamp = now.strftime(TIMESTAMP_FORMAT)
    suffix = 1
    while True:
        run_dir = parent / (stamp if suffix == 1 else f"{stamp}-{suffix}")
        try:
            # mkdir without exist_ok is the atomic claim: two runs in one second never share a dir.
            run_dir.mkdir()
            return run_dir
        except FileExistsError:
            suffix += 1


def update_latest(store: Path, run_dir: Path) -> None:
    """Point ``store/latest`` at ``run_dir`` (relative target), replacing any old link atomically."""
    target = os.path.relpath(run_dir, store)
    temporary = store / f".{LATEST}.{os.getpid()}.tmp"
    temporary.unlink(missing_ok=True)
    temporary.symlink_to(target)
    # rename(2) over the old link: readers see the old run or the new one, never no link at all.
    os.replace(temporary, store / LATEST)


def run_verdict(run_dir: Path) -> bool | str:
    """The run's ``valid`` from results.json; ``"incomplete"`` without one, ``"unknown"`` if unreadable."""
    try:
        results = json.loads((run_dir / "results.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        return "incomplete"
    except (OSError, ValueError):
        return "unknown"
    valid = results.get("valid", "unknown") if isinstance(results, dict) else "unknown"
    return valid if valid in (True, False) else "unknown"


def list_runs(store: Path) -> list[RunSummary]:
    """Every run in the store, newest first; symlinks (``latest``) and stray files are skipped."""
    runs: list[RunSummary] = []
    if not store.is_dir():
        return runs
    for test_dir in store.iterdir():
        if test_dir.is_symlink() or not test_dir.is_dir() or test_dir.name.startswith("."):
            continue
        for run_dir in test_dir.iterdir():
            if run_dir.is_symlink() or not run_dir.is_dir() or not RUN_NAME.match(run_dir.name):
                continue
            runs.append(RunSummary(test_dir.name, run_dir.name, run_dir, run_verdict(run_dir)))
    return sorted(runs, key=lambda run: (_sort_key(run.timestamp), run.test_name), reverse=True)


def _sort_key(timestamp: str) -> tuple[str, int]:
    # "…-10" must sort after "…-9": compare the suffix as a number.
    stamp, _, suffix = timestamp.partition("-")
    return stamp, int(suffix or 1)


def load_run(run_dir: Path) -> tuple[dict[str, Any], list[Op], dict[str, Any] | None]:
    """``(test options, history, results or None)`` of a stored run, for ``dynacheck analyze``."""
    test = json.loads((run_dir / "test.json").read_text(encoding="utf-8"))
    history = read_history(run_dir / "history.jsonl")
    results_path = run_dir / "results.json"
    results = json.loads(results_path.read_text(encoding="utf-8")) if results_path.exists() else None
    return test, history, results


def save_json(path: Path, doc: Any) -> None:
    """Write ``doc`` as indented JSON atomically: a temporary file in the same directory, then rename."""
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(descriptor, 0o644)  # mkstemp makes it 0600; the store is meant to be read (dynacheck serve)
        with os.fdopen(descriptor, "w", encoding="utf-8") as out:
            json.dump(doc, out, indent=2)
            out.write("\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
