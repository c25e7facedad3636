"""Benchmark of the clock nemesis' cost: the same seeded cart run with ``--nemesis none`` and ``--nemesis clock``.

Runs ``dynacheck run --local 3 --workload cart --seed S --time-limit T --rate R`` alternately without and with the
clock nemesis (none, clock, none, clock, ...: the machine is shared, so each pair runs back to back in the same
conditions), then prints per run the acknowledged adds (``results.json`` siblings ``acknowledged_count``), the
add latency quantiles from the history (ok add completions minus their invokes) and the clock faults that ran,
and at the end the clock/none ratios over all pairs. The aim: with the clock nemesis on, acknowledged adds and
the p50/p99 add latency within 15% of the run without it (the nemesis skews wall clocks, nothing else).

    .venv/bin/python scripts/bench_nemesis.py [--pairs 2] [--seed 1] [--time-limit 20] [--rate 50] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from dynacheck.checkers.perf import quantiles
from dynacheck.history import NEMESIS, OK, Op, is_client, pairs, read_history

NEMESES = ("none", "clock")
QUANTILES = (0.5, 0.9, 0.99)
#: Within this much of the fault-free run the nemesis is taken to cost nothing.
TOLERANCE = 0.15


@attrs.frozen
class RunFigures:
    """What one dynacheck run measured."""

    nemesis: str
    acknowledged: int
    latencies_ms: tuple[float, ...]
    faults: int
    verdict: Any
    seconds: float

    def quantiles(self) -> dict[str, float]:
        return quantiles(np.array(self.latencies_ms), QUANTILES)


def add_latencies_ms(history: Iterable[Op]) -> list[float]:
    """Milliseconds from each client add's invoke to its ok completion (failed and unknown adds left out)."""
    return [(completion["time"] - invoke["time"]) / 1e6
            for invoke, completion in pairs(op for op in history if is_client(op))
            if invoke.get("f") == "add" and completion is not None and completion["type"] == OK]


def faults_run(history: Iterable[Op], fault: str = "clock") -> int:
    """How many ``start-<fault>`` completed ``ok`` (a nemesis that never ran would make the comparison moot)."""
    return sum(1 for op in history if op.get("process") == NEMESIS and op["type"] == OK
               and op.get("f") == f"start-{fault}")


def figures(nemesis: str, run_dir: Path, seconds: float) -> RunFigures:
    """The figures of the stored run in ``run_dir``."""
    results = json.loads((run_dir / "results.json").read_text())
    history = read_history(run_dir / "history.jsonl")
    return RunFigures(nemesis=nemesis, acknowledged=int(results["checkers"]["siblings"]["acknowledged_count"]),
                      latencies_ms=tuple(add_latencies_ms(history)), faults=faults_run(history),
                      verdict=results.get("valid"), seconds=seconds)


def ratios(runs: list[RunFigures]) -> dict[str, float]:
    """clock/none over all runs of each kind: acknowledged adds (summed) and the pooled add latency quantiles."""
    pooled = {nemesis: [run for run in runs if run.nemesis == nemesis] for nemesis in NEMESES}
    if not all(pooled.values()):
        return {}
    acknowledged = {nemesis: sum(run.acknowledged for run in chosen) for nemesis, chosen in pooled.items()}
    latency = {nemesis: quantiles(np.array([ms for run in chosen for ms in run.latencies_ms]), QUANTILES)
               for nemesis, chosen in pooled.items()}
    found = {"acknowledged": acknowledged["clock"] / max(1, acknowledged["none"])}
    for q, without in latency["none"].items():
        found[f"p{round(float(q) * 100)}"] = latency["clock"][q] / without if without else float("inf")
    return found


def meets_aim(found: dict[str, float]) -> bool:
    """At most ``TOLERANCE`` fewer acknowledged adds and at most that much slower at p50 and p99."""
    return bool(found) and found["acknowledged"] >= 1 - TOLERANCE and all(
        found[name] <= 1 + TOLERANCE for name in ("p50", "p99"))


def run_once(args: argparse.Namespace, nemesis: str, store: Path, index: int) -> RunFigures:
    """One ``dynacheck run``; its figures from the run it stored."""
    name = f"bench-nemesis-{index}-{nemesis}"
    command = [*args.dynacheck.split(), "run", "--local", str(args.local), "--workload", "cart",
               "--seed", str(args.seed), "--time-limit", str(args.time_limit), "--rate", str(args.rate),
               "--concurrency", str(args.concurrency), "--nemesis", nemesis, "--store", str(store),
               "--name", name, "--format", "json"]
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    seconds = time.monotonic() - started
    runs = sorted((store / name).glob("2*"))
    if not runs or not (runs[-1] / "results.json").is_file():
        raise SystemExit(f"{' '.join(command)} exited {done.returncode} and stored no results:\n{done.stderr[-2000:]}")
    return figures(nemesis, runs[-1], seconds)


def row(label: str, run: RunFigures) -> str:
    found = run.quantiles()
    shown = "  ".join(f"p{round(float(q) * 100)} {found.get(str(q), float('nan')):8.1f}" for q in QUANTILES)
    return (f"{label:<8} {run.nemesis:<6} acked adds {run.acknowledged:5d}  {shown} ms  clock faults {run.faults:2d}"
            f"  valid={run.verdict}  ({run.seconds:.0f}s)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=2, help="none/clock pairs, run alternately")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--time-limit", type=float, default=20.0, help="seconds of workload per run")
    parser.add_argument("--rate", type=float, default=50.0, help="ops/s, all clients")
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--local", type=int, default=3, help="nodes")
    parser.add_argument("--dynacheck", default=str(Path(sys.executable).parent / "dynacheck"),
                        help="the dynacheck command (words split on spaces)")
    parser.add_argument("--keep", type=Path, help="store the runs here and keep them (default: a temp dir)")
    args = parser.parse_args()

    store = args.keep or Path(tempfile.mkdtemp(prefix="bench-nemesis-"))
    store.mkdir(parents=True, exist_ok=True)
    print(f"cart, {args.local} local nodes, seed {args.seed}, {args.time_limit:g}s at {args.rate:g} ops/s, "
          f"{args.concurrency} clients; {args.pairs} none/clock pairs, alternating ({store})", flush=True)
    runs: list[RunFigures] = []
    try:
        for index in range(1, args.pairs + 1):
            for nemesis in NEMESES:
                runs.append(run_once(args, nemesis, store, index))
                print(row(f"pair {index}", runs[-1]), flush=True)
    finally:
        if args.keep is None:
            shutil.rmtree(store, ignore_errors=True)
    found = ratios(runs)
    print("clock/none: " + "  ".join(f"{name} {value:.2f}" for name, value in found.items()))
    within = meets_aim(found)
    print(f"within {TOLERANCE:.0%} of the run without the nemesis: {'yes' if within else 'no'}")
    if any(run.nemesis == "clock" and run.faults == 0 for run in runs):
        print("warning: a clock run ran no clock fault; lengthen --time-limit")
    return 0


if __name__ == "__main__":
    sys.exit(main())
