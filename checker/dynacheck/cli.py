"""``dynacheck run|analyze|serve`` (CONTRACT): exit 0 valid, 1 invalid, 2 unknown or usage error,
3 crashed. ``--format json`` prints one JSON document on stdout; progress goes to stderr."""

from __future__ import annotations

import json
import os
import random
import signal
import sys
from pathlib import Path
from typing import Any

import click

from dynacheck.nemeses import COPY_LOSING, DEFAULT_SPARES, parse_nemesis
from dynacheck.options import workload_options
from dynacheck.workloads import VCLOCK_ONLY

EXIT_USAGE = 2


def summary_rows(results: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(checker, verdict, the figures that matter) for the summary table."""
    rows = []
    for name, result in results.get("checkers", {}).items():
        figures = [f"{key.removesuffix('_count').replace('_', ' ')} {value}" for key, value in result.items()
                   if key.endswith("_count") and value]
        for key in ("time_to_converge_ms", "rounds", "error"):
            if result.get(key) is not None:
                figures.append(f"{key.replace('_', ' ')} {result[key]}")
        rows.append((name, verdict_word(result.get("valid")), _joined(figures, EVIDENCE_WIDTH)))
    return rows


#: Characters of evidence a summary row shows (results.json has every figure).
EVIDENCE_WIDTH = 100


def _joined(figures: list[str], width: int) -> str:
    """As many whole figures as fit in ``width`` characters (a figure cut short would misread)."""
    shown = ""
    for figure in figures:
        candidate = f"{shown}, {figure}" if shown else figure
        if len(candidate) > width:
            return f"{shown}, ..." if shown else figure[:width]
        shown = candidate
    return shown


def verdict_word(valid: Any) -> str:
    return {True: "valid", False: "INVALID"}.get(valid, "unknown")


def print_summary(run_dir: Path, results: dict[str, Any], code: int) -> None:
    rows = summary_rows(results)
    width = max([len(name) for name, _, _ in rows] + [7])
    click.echo(f"{'checker':<{width}}  {'verdict':<8}  evidence")
    for name, verdict, figures in rows:
        click.echo(f"{name:<{width}}  {verdict:<8}  {figures}")
    lost = results.get("checkers", {}).get("siblings", {}).get("lost", [])
    if lost:
        shown = ", ".join(f"{item.get('key')}:{item.get('element')}" for item in lost[:20])
        click.echo(f"lost acknowledged writes ({results['checkers']['siblings'].get('lost_count')}): {shown}"
                   + (" ..." if len(lost) > 20 else ""))
    for warning in results.get("warnings", []) + results.get("checkers", {}).get("faults", {}).get("warnings", []):
        click.echo(f"warning: {warning}")
    if results.get("crashed"):
        click.echo(f"crashed: {results['crashed']}")
    word = "crashed" if code == 3 else verdict_word(results.get("valid"))
    click.echo(f"verdict: {word}")
    click.echo(f"report: {run_dir}")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Check that a dynamod cluster keeps its promise: Jepsen-style tests with faults."""


@cli.command()
@click.option("--local", "local", type=click.IntRange(1, 9), help="N nodes on this machine (no root needed)")
@click.option("--testbed", type=click.IntRange(1, 20), help="N testbed hosts (root: namespaces with sshd)")
@click.option("--testbed-dir", default=".dynamo/testbed", show_default=True, help="where the testbed lives")
@click.option("--spares", type=click.IntRange(0, 9),
              help=f"hosts beyond the --local/--testbed N members (with --nodes-file: its last ones), installed but "
                   f"stopped, that the membership nemesis joins and that nodes which left become again "
                   f"(default {DEFAULT_SPARES} with membership, else 0)")
@click.option("--nodes-file", type=click.Path(dir_okay=False), help="hosts to test (nodes.json or inventory.ini)")
@workload_options(concurrency=10, rate=50)
@click.option("--nemesis", default="none", show_default=True,
              help="none, all, or comma-separated: partition, clock, kill, pause, netem, disk, power, corrupt, "
                   "membership")
@click.option("--time-limit", type=click.FloatRange(1, 86400), default=60, show_default=True, help="seconds")
@click.option("--seed", type=int, help="random seed of the schedule (default: a random one, saved in test.json)")
@click.option("--nemesis-interval", type=click.FloatRange(0.1, 3600), default=5, show_default=True,
              help="seconds between faults")
@click.option("--nemesis-duration", type=click.FloatRange(0.1, 3600), default=5, show_default=True,
              help="seconds a fault lasts")
@click.option("--convergence-timeout", type=click.FloatRange(1, 3600), default=60, show_default=True)
@click.option("--quiet-margin", type=click.FloatRange(0, 3600), default=3, show_default=True,
              help="seconds after a fault before the quorum checker judges stale reads")
@click.option("--max-context-entries", type=click.IntRange(1, 10000),
              help="the nodes' bound on a causal context for this run (default: the node's, 64): below the actors "
                   "a key sees (each coordinator, and each restart of one, is a new actor), truncation is under test")
@click.option("--tls", is_flag=True,
              help="a secured cluster: mutual TLS between the nodes, the checker over HTTPS with an admin client "
                   "certificate (--local, --testbed: made here; --nodes-file: its \"tls\" object names them)")
@click.option("--store", default="store", show_default=True, help="the store directory")
@click.option("--name", help="test name in the store (default: WORKLOAD-MODE-NEMESES)")
@click.option("--format", "output", type=click.Choice(["table", "json"]), default="table", show_default=True)
def run(local: int | None, testbed: int | None, testbed_dir: str, nodes_file: str | None, workload: str,
        nemesis: str, time_limit: float, concurrency: int, rate: float, keys: int, mode: str, replicas: int,
        read_quorum: int, write_quorum: int, seed: int | None, nemesis_interval: float, nemesis_duration: float,
        convergence_timeout: float, quiet_margin: float, store: str, name: str | None, output: str,
        max_context_entries: int | None = None, spares: int | None = None, tls: bool = False) -> None:
    """Run one test against a cluster and print the verdict and the run's store path."""
    from dynacheck.runner import Options, run_test
    targets = [flag for flag, value in (("--local", local), ("--testbed", testbed), ("--nodes-file", nodes_file))
               if value]
    if len(targets) > 1:
        raise click.UsageError(f"choose one of {', '.join(targets)}")
    if not targets:
        local = 3
    if not (read_quorum <= replicas and write_quorum <= replicas):
        raise click.UsageError("--r and --w must not exceed --n")
    if testbed and tls:
        _check_testbed_tls(testbed_dir)
    try:
        faults = parse_nemesis(nemesis, local=bool(local), root=os.geteuid() == 0)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    losing = [fault for fault in faults if fault in COPY_LOSING]
    if losing and write_quorum < 2:
        if nemesis.strip() != "all":
            raise click.UsageError(f"{', '.join(losing)} needs --w 2 or more: with W=1 one lost disk may hold the "
                                   "only copy of an acknowledged write")
        faults = tuple(fault for fault in faults if fault not in COPY_LOSING)
    if workload in VCLOCK_ONLY and mode != "vclock":
        raise click.UsageError(f"--workload {workload} needs --mode vclock: in lww a blind write replaces what it "
                               "did not see, by design")
    if nodes_file and not Path(nodes_file).is_file():
        raise click.UsageError(f"--nodes-file {nodes_file}: no such file")
    if nodes_file:
        _check_nodes_file_tls(nodes_file, tls)
    options = Options(workload=workload, nemesis=faults, time_limit=time_limit, concurrency=concurrency, rate=rate,
                      keys=keys, mode=mode, n=replicas, r=read_quorum, w=write_quorum,
                      seed=seed if seed is not None else random.SystemRandom().randrange(2**31),
                      nemesis_interval=nemesis_interval, nemesis_duration=nemesis_duration,
                      convergence_timeout=convergence_timeout, quiet_margin=quiet_margin, local=local, testbed=testbed,
                      testbed_dir=testbed_dir, nodes_file=nodes_file, store=store, name=name,
                      max_context_entries=max_context_entries, tls=tls,
                      spares=spares if spares is not None else DEFAULT_SPARES * ("membership" in faults))
    signal.signal(signal.SIGTERM, _interrupt)  # heal and tear down on SIGTERM as on Ctrl-C
    run_dir, results, code = run_test(options)
    _report(run_dir, results, code, output)


def _check_nodes_file_tls(nodes_file: str, tls: bool) -> None:
    """A nodes file says how to reach secured nodes exactly when the run is secured (--tls)."""
    from dynactl.credentials import HOST_CREDENTIALS_VAR, host_credentials, nodes_file_credentials
    from dynactl.inventory import InventoryError, load_hosts
    from dynamod.client import CredentialsError

    try:
        named = nodes_file_credentials(nodes_file) or host_credentials(load_hosts(nodes_file)[0])
    except (InventoryError, CredentialsError) as exc:
        raise click.UsageError(str(exc)) from exc
    if tls and named is None:
        raise click.UsageError(f'--tls: {nodes_file} does not say how to reach the secured nodes: give it a "tls" '
                               f'object {{"ca", "cert", "key", "token"}} (nodes.json) or the {HOST_CREDENTIALS_VAR} '
                               "variable (inventory)")
    if named is not None and not tls:
        raise click.UsageError(f"{nodes_file} names TLS credentials: its cluster is secured, run with --tls")


def _check_testbed_tls(testbed_dir: str) -> None:
    """--tls with --testbed writes the certificates through this machine's file system, which only
    netns hosts share."""
    from dynactl.testbed import Testbed, TestbedError

    bed = Testbed(testbed_dir)
    try:
        bed.load()
    except TestbedError as exc:
        raise click.UsageError(str(exc)) from exc
    if bed.kind == "machine":
        raise click.UsageError(f"--tls with --testbed needs netns hosts: the machines in {testbed_dir} do not share "
                               f"this machine's files; secure them with Ansible (dynamod_tls) and run --nodes-file "
                               f"{Path(testbed_dir) / 'inventory.ini'} --tls")


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


@cli.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--format", "output", type=click.Choice(["table", "json"]), default="table", show_default=True)
def analyze(run_dir: str, output: str) -> None:
    """Re-check a stored run (its history.jsonl) without a cluster."""
    from dynacheck.verdict import analyze as analyze_run
    path = Path(run_dir)
    if not (path / "history.jsonl").is_file() or not (path / "test.json").is_file():
        raise click.UsageError(f"{run_dir} is not a run directory (no history.jsonl and test.json)")
    try:
        results, code = analyze_run(path)
    except ValueError as exc:
        click.echo(f"dynacheck: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    _report(path, results, code, output)


@cli.command()
@click.option("--store", default="store", show_default=True, help="the store directory")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True)
def serve(store: str, host: str, port: int) -> None:
    """Serve the store as web pages: every run, its verdict, plots, timeline and graphs."""
    from dynacheck.web import serve as serve_store
    click.echo(f"dynacheck: serving {Path(store).resolve()} on http://{host}:{port}/ (Ctrl-C stops)", err=True)
    serve_store(Path(store), host, port)


def _report(run_dir: Path, results: dict[str, Any], code: int, output: str) -> None:
    if output == "json":
        click.echo(json.dumps({"run": str(run_dir), "exit": code, **results}, default=str))
    else:
        print_summary(run_dir, results, code)
    sys.exit(code)


def _add_sim() -> None:
    from dynacheck.sim.command import sim

    cli.add_command(sim)


_add_sim()


def main() -> None:
    """Console-script entry point: usage errors exit 2, internal errors 3."""
    try:
        code = cli.main(standalone_mode=False)
    except click.exceptions.Exit as exc:
        code = exc.exit_code
    except click.ClickException as exc:
        exc.show()
        code = EXIT_USAGE
    except click.exceptions.Abort:
        click.echo("dynacheck: aborted", err=True)
        code = 3
    except Exception as exc:  # noqa: BLE001 - an internal error is exit 3, never 1 ("invalid")
        click.echo(f"dynacheck: internal error: {type(exc).__name__}: {exc}", err=True)
        code = 3
    sys.exit(code or 0)
