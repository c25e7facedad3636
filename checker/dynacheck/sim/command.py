"""``dynacheck sim``: runs of the whole cluster in one process, on simulated time, from seeds.

``--seed S`` runs one seed with every checker (plots too) and prints its verdict; ``--seeds K``
runs K seeds from ``--seed`` (default 0) on ``--jobs`` processes with the verdict checkers only,
keeps the runs that were not valid, and prints each one's replay command and the rate.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import attrs
import click

from dynacheck.nemeses import DEFAULT_SPARES
from dynacheck.options import workload_options

#: The checkers a seed search runs (the plots and the timeline are for one run a person looks at).
VERDICT_CHECKERS = ("siblings", "convergence", "causality", "quorum", "availability", "replicas", "faults")


def _ensure_fixed_hash_seed() -> None:
    """The same seed must give the same history in any process: str hashes (set orders) must not
    vary, so the command runs again under ``PYTHONHASHSEED=0`` unless it already does."""
    if os.environ.get("PYTHONHASHSEED") != "0":
        os.environ["PYTHONHASHSEED"] = "0"
        os.execv(sys.executable, [sys.executable, "-m", "dynacheck", *sys.argv[1:]])


def _options(params: dict[str, Any], seed: int) -> Any:
    from dynacheck.runner import Options

    return Options(workload=params["workload"], nemesis=params["faults"], time_limit=params["time_limit"],
                   concurrency=params["concurrency"], rate=params["rate"], keys=params["keys"], mode=params["mode"],
                   n=params["n"], r=params["r"], w=params["w"], seed=seed, local=params["nodes"],
                   nemesis_interval=params["nemesis_interval"] or 5.0,
                   nemesis_duration=params["nemesis_duration"] or 5.0,
                   store=params["store"], name=params["name"] or f"sim-{params['workload']}-{params['mode']}")


def _one(params: dict[str, Any], seed: int, checkers: tuple[str, ...] | None, keep: bool) -> dict[str, Any]:
    """Run ``seed``; returns its summary (the run directory only when it is kept)."""
    from dynacheck.sim.run import Swarm, run_sim

    options = _options(params, seed)
    swarm = Swarm.choose(seed, params["faults"]) if params["swarm"] else None
    if swarm is not None:
        options = attrs.evolve(options, nemesis=swarm.nemesis,  # what the command gave explicitly stays
                               nemesis_interval=params["nemesis_interval"] or swarm.nemesis_interval,
                               nemesis_duration=params["nemesis_duration"] or swarm.nemesis_duration)
    if "membership" in options.nemesis:  # the pool of spare nodes it joins from (dynacheck run's default)
        options = attrs.evolve(options, spares=DEFAULT_SPARES)
    started = time.perf_counter()
    run_dir, results, code = run_sim(options, swarm, checkers=checkers)
    seconds = round(time.perf_counter() - started, 3)
    summary = {"seed": seed, "valid": results.get("valid"), "exit": code, "seconds": seconds,
               "nemesis": list(options.nemesis), "failed": sorted(name for name, result in
                                                                  (results.get("checkers") or {}).items()
                                                                  if (result or {}).get("valid") is not True)}
    if keep or results.get("valid") is not True:
        summary["run_dir"] = str(run_dir)
    else:
        shutil.rmtree(run_dir, ignore_errors=True)
    return summary


def _search(job: tuple[dict[str, Any], int]) -> dict[str, Any]:
    params, seed = job
    return _one(params, seed, VERDICT_CHECKERS, params["keep_all"])


def replay_command(params: dict[str, Any], seed: int) -> str:
    """The command that runs ``seed`` again, alone, with every checker."""
    parts = ["dynacheck sim", f"--seed {seed}", f"--nodes {params['nodes']}", f"--workload {params['workload']}",
             f"--nemesis {params['nemesis']}", f"--time-limit {params['time_limit']:g}",
             f"--concurrency {params['concurrency']}", f"--rate {params['rate']:g}", f"--keys {params['keys']}",
             f"--mode {params['mode']}", f"--n {params['n']} --r {params['r']} --w {params['w']}"]
    for name in ("nemesis_interval", "nemesis_duration"):
        if params[name] is not None:
            parts.append(f"--{name.replace('_', '-')} {params[name]:g}")
    return " ".join(parts)


@click.command("sim")
@click.option("--seed", type=click.IntRange(0), default=None, help="run this seed (with --seeds: the first one)")
@click.option("--seeds", type=click.IntRange(1, 10_000_000), default=None, help="run this many seeds (a search)")
@click.option("--nodes", type=click.IntRange(1, 9), default=3, show_default=True, help="cluster size")
@workload_options(concurrency=5, rate=10)
@click.option("--nemesis", default="swarm", show_default=True,
              help="swarm (each seed picks its faults among all the simulator has), none, or a comma-separated list "
                   "of partition, clock, kill, pause, netem, disk, power, membership")
@click.option("--time-limit", type=click.FloatRange(1, 86400), default=60, show_default=True,
              help="simulated seconds of workload")
@click.option("--nemesis-interval", type=click.FloatRange(0.1, 3600), default=None,
              help="seconds between faults [default: 5; with swarm, the seed's choice]")
@click.option("--nemesis-duration", type=click.FloatRange(0.1, 3600), default=None,
              help="seconds each fault lasts [default: 5; with swarm, the seed's choice]")
@click.option("--jobs", type=click.IntRange(1, 256), default=None,
              help="processes for --seeds [default: one per core]")
@click.option("--keep-all", is_flag=True,
              help="with --seeds: keep every run in the store (default: the ones not valid)")
@click.option("--store", default="store", show_default=True, help="the store directory")
@click.option("--name", help="test name in the store (default: sim-WORKLOAD-MODE)")
@click.option("--format", "output", type=click.Choice(["table", "json"]), default="table", show_default=True)
def sim(seed: int | None, seeds: int | None, nodes: int, workload: str, nemesis: str, time_limit: float,
        nemesis_interval: float | None, nemesis_duration: float | None, concurrency: int, rate: float, keys: int,
        mode: str, replicas: int, read_quorum: int, write_quorum: int,
        jobs: int | None, keep_all: bool, store: str, name: str | None, output: str) -> None:
    """Simulate the whole cluster in this process (real nodes, simulated network, disk and clock):
    deterministic runs from seeds, a failing one replayed by its seed."""
    from dynacheck.sim.faults import SIM_FAULTS

    if not 1 <= read_quorum <= replicas or not 1 <= write_quorum <= replicas or replicas > nodes:
        raise click.UsageError("need 1 <= R, W <= N <= --nodes")
    swarm = nemesis == "swarm"
    faults = SIM_FAULTS if swarm else tuple(f.strip() for f in nemesis.split(",") if f.strip() not in ("", "none"))
    unknown = [fault for fault in faults if fault not in SIM_FAULTS]
    if unknown:
        raise click.UsageError(f"the simulator cannot inject {', '.join(unknown)} "
                               f"(choose swarm, none or among {', '.join(SIM_FAULTS)})")
    _ensure_fixed_hash_seed()
    params = {"nodes": nodes, "workload": workload, "nemesis": nemesis, "faults": faults, "swarm": swarm,
              "time_limit": time_limit, "nemesis_interval": nemesis_interval,
              "nemesis_duration": nemesis_duration, "concurrency": concurrency, "rate": rate, "keys": keys,
              "mode": mode,
              "n": replicas, "r": read_quorum, "w": write_quorum, "store": store, "name": name, "keep_all": keep_all}
    if seeds is None:
        from dynacheck.cli import print_summary

        summary = _one(params, seed if seed is not None else 0, None, keep=True)
        run_dir = Path(summary["run_dir"])
        results = json.loads((run_dir / "results.json").read_text())
        if output == "json":
            click.echo(json.dumps({"run_dir": str(run_dir), **results}, indent=2))
        else:
            print_summary(run_dir, results, summary["exit"])
            click.echo(f"simulated {time_limit:g} s in {summary['seconds']:.2f} s (seed {summary['seed']}, "
                       f"nemesis {','.join(summary['nemesis']) or 'none'})")
        sys.exit(summary["exit"])
    _search_seeds(params, seed or 0, seeds, jobs or os.cpu_count() or 1, output)


def _search_seeds(params: dict[str, Any], first: int, count: int, jobs: int, output: str) -> None:
    import multiprocessing

    started = time.perf_counter()
    work = [(params, seed) for seed in range(first, first + count)]
    summaries: list[dict[str, Any]] = []
    if jobs == 1:
        summaries = [_search(job) for job in work]
    else:
        with multiprocessing.get_context("spawn").Pool(jobs) as pool:
            for summary in pool.imap_unordered(_search, work):
                summaries.append(summary)
    elapsed = time.perf_counter() - started
    summaries.sort(key=lambda s: s["seed"])
    failing = [s for s in summaries if s["valid"] is not True]
    per_minute = len(summaries) / elapsed * 60 if elapsed else 0.0
    run_seconds = sum(s["seconds"] for s in summaries) / len(summaries)
    if output == "json":
        click.echo(json.dumps({"runs": len(summaries), "not_valid": failing, "seconds": round(elapsed, 3),
                               "runs_per_minute": round(per_minute, 1), "jobs": jobs}, indent=2))
    else:
        click.echo(f"{len(summaries)} runs of {params['time_limit']:g} simulated s in {elapsed:.1f} s on {jobs} "
                   f"processes: {per_minute:.1f} runs/min ({60 / run_seconds:.1f} runs/min per core); "
                   f"{len(summaries) - len(failing)} valid, {len(failing)} not")
        for summary in failing:
            click.echo(f"seed {summary['seed']}: {summary['valid']} ({', '.join(summary['failed'])}; nemesis "
                       f"{','.join(summary['nemesis']) or 'none'}) {summary.get('run_dir', '')}")
            click.echo(f"  replay: {replay_command(params, summary['seed'])}")
    sys.exit(0 if not failing else 1 if any(s["valid"] is False for s in failing) else 2)
