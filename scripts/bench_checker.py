"""Benchmark of the dynacheck checkers on a synthetic 100,000-operation cart history.

Generates (seeded) a run like ``dynacheck run`` stores one — 10 client processes, 70% read-modify-write
adds and 30% reads, ~1% info, partitions with hinted handoff, convergence polls after the final heal,
one final read per key per node, clocks and supersedes as a correct store produces them — writes it as
``history.jsonl`` and ``test.json``, then times loading it and each checker on its own (plus
``check_all`` and the ``dynacheck analyze`` command), and prints seconds per step. A checker on its
own derives what it needs from the history itself; ``check_all`` shares one ``HistoryIndex`` among
them (the pairs, the nemesis ops, the causality analysis that graphs draws too), so its total is
less than the sum of the rows above it.

    .venv/bin/python scripts/bench_checker.py [--ops 100000] [--seed 1] [--key-limit 250] [--keep DIR]
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dynacheck.checkers import check_all
from dynacheck.history import read_history, write_history
from dynacheck.synthetic import generate

CHECKERS = ("siblings", "convergence", "causality", "quorum", "availability", "replicas", "faults", "graphs", "perf",
            "timeline")


def available(name: str) -> bool:
    """True when ``dynacheck.checkers.<name>`` exists (perf and timeline are written elsewhere)."""
    return importlib.util.find_spec(f"dynacheck.checkers.{name}") is not None


def timed(action, *args):
    start = time.perf_counter()
    value = action(*args)
    return value, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=100_000, help="client operations (invocations)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--active-keys", type=int, default=8, help="keys in use at any moment")
    parser.add_argument("--key-limit", type=int, default=250,
                        help="writes per key before it retires (0: never, so carts grow without bound)")
    parser.add_argument("--keep", type=Path, help="write the run here and keep it (default: a temp dir)")
    args = parser.parse_args()

    (test, history), generated = timed(lambda: generate(args.ops, seed=args.seed, active_keys=args.active_keys,
                                                        key_limit=args.key_limit or None))
    run_dir = args.keep or Path(tempfile.mkdtemp(prefix="bench-checker-"))
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        write_history(run_dir / "history.jsonl", history)
        (run_dir / "test.json").write_text(json.dumps(test, indent=2))
        del history
        size = (run_dir / "history.jsonl").stat().st_size
        reads = [op for op in read_history(run_dir / "history.jsonl") if op.get("f") == "read" and op["type"] == "ok"]
        cart = sum(len(op["value"]) for op in reads) / max(1, len(reads))
        print(f"generated {args.ops:,} client ops in {generated:.1f}s: {len(test['keys'])} keys, "
              f"{size / 1e6:.0f} MB, mean read size {cart:.0f} elements ({run_dir})")
        del reads

        rows: list[tuple[str, float, str]] = []
        loaded, seconds = timed(read_history, run_dir / "history.jsonl")
        rows.append(("load history.jsonl", seconds, f"{len(loaded):,} ops"))
        names = tuple(name for name in CHECKERS if available(name))
        for name in names:
            module = importlib.import_module(f"dynacheck.checkers.{name}")
            result, seconds = timed(module.check, test, loaded, run_dir)
            rows.append((name, seconds, f"valid={result.get('valid')}"))
        result, seconds = timed(check_all, test, loaded, run_dir, names)
        rows.append((f"check_all ({len(names)} checkers)", seconds, f"valid={result['valid']}"))
        missing = [name for name in CHECKERS if name not in names]

        # The whole command, as a user runs it: a fresh process loading, checking and drawing.
        started = time.perf_counter()
        analysed = subprocess.run([str(Path(sys.executable).parent / "dynacheck"), "analyze", str(run_dir)],
                                  capture_output=True, text=True, check=False)
        rows.append(("dynacheck analyze (process)", time.perf_counter() - started, f"exit {analysed.returncode}"))

        width = max(len(name) for name, _, _ in rows)
        print(f"\n{'step':<{width}}  {'seconds':>8}  result")
        for name, seconds, note in rows:
            print(f"{name:<{width}}  {seconds:8.2f}  {note}")
        if missing:
            print(f"\nnot built yet, not timed: {', '.join(missing)}")
        return 0 if result["valid"] is True else 1
    finally:
        if args.keep is None:
            shutil.rmtree(run_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
