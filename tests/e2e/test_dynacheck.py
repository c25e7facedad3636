"""dynacheck against testbed hosts over real SSH: lww mode visibly loses acknowledged writes under
clock skew, and vclock mode loses none when disks, power and files are lost during a partition.
(vclock under partitions, clock skew and kills, with the run's store layout and no partition rule
left behind, is tests/e2e/test_machines.py's dynacheck run, on systemd machines.)"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from .conftest import BIN, REPO, make_testbed


@pytest.fixture(scope="module")
def bed(tmp_path_factory):
    yield from make_testbed(tmp_path_factory, 3, "check")


def dynacheck(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "dynacheck"), *args], capture_output=True, text=True, timeout=timeout,
                          cwd=REPO, check=False)


def run_check(bed, store: Path, *options: str) -> tuple[subprocess.CompletedProcess, dict]:
    finished = dynacheck("run", "--testbed", "3", "--testbed-dir", str(bed.directory), "--store", str(store),
                         "--format", "json", *options)
    assert finished.returncode in (0, 1, 2), finished.stdout[-2000:] + finished.stderr[-4000:]
    return finished, json.loads(finished.stdout)


def started_faults(run_dir: Path) -> set[str]:
    ops = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    return {op["f"].removeprefix("start-") for op in ops
            if op["process"] == "nemesis" and op["type"] == "ok" and op["f"].startswith("start-")}


def test_lww_loses_acknowledged_adds_under_clock_skew_and_analyze_agrees(bed, wheelhouse, tmp_path):
    finished, report = run_check(bed, tmp_path, "--workload", "cart", "--mode", "lww", "--nemesis", "clock",
                                 "--time-limit", "14", "--rate", "40", "--nemesis-interval", "1",
                                 "--nemesis-duration", "5", "--seed", "3")
    assert finished.returncode == 1, json.dumps(report["checkers"], indent=1)[:3000]
    siblings = report["checkers"]["siblings"]
    assert siblings["valid"] is False and siblings["lost_count"] > 0 and siblings["lost"]
    assert "lost" in json.dumps(report["checkers"]["siblings"])
    reanalysed = dynacheck("analyze", report["run"], "--format", "json")
    assert reanalysed.returncode == 1, reanalysed.stderr
    again = json.loads(reanalysed.stdout)
    assert again["valid"] is False
    assert again["checkers"]["siblings"]["lost_count"] == siblings["lost_count"]


def test_lost_disks_lost_power_and_corrupt_files_overlapping_a_partition_lose_no_acknowledged_add(
        bed, wheelhouse, tmp_path):
    finished, report = run_check(bed, tmp_path, "--workload", "cart", "--mode", "vclock",
                                 "--nemesis", "disk,power,corrupt,partition", "--time-limit", "36", "--rate", "40",
                                 "--nemesis-interval", "3", "--nemesis-duration", "1.5", "--seed", "13")
    run_dir = Path(report["run"])
    assert finished.returncode == 0, json.dumps(report["checkers"], indent=1)[:3000] + finished.stderr[-2000:]
    started = started_faults(run_dir)
    assert {"power", "partition"} <= started and {"disk", "corrupt"} & started
    # A second lost disk (or corrupt file) waits until the first is known repaired: when its time
    # came too soon, it was skipped with that reason, never run.
    ops = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    for op in ops:
        if op["process"] == "nemesis" and op.get("skipped"):
            assert "not known repaired" in op["skipped"], op
    for kind in {"disk", "corrupt"} - started:
        assert any(op.get("skipped") and op["f"] == f"start-{kind}" for op in ops), kind
    siblings = report["checkers"]["siblings"]
    assert siblings["lost_count"] == 0 and siblings["acknowledged_count"] > 100
    assert report["checkers"]["convergence"]["valid"] is True
    assert report["checkers"]["faults"]["valid"] is True and report["checkers"]["quorum"]["valid"] is True
    # The data dirs lived on lazyfs for the run, which unmounted them after it: no lazyfs daemon is left.
    lazyfs = subprocess.run(["pgrep", "-f", "dynacheck.lazyfs serve"], capture_output=True, text=True, check=False)
    assert lazyfs.stdout.strip() == "", lazyfs.stdout
