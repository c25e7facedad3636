"""dynacheck's membership nemesis on testbed hosts over real SSH (root): 3 members and 2 spare hosts;
a host joins, one leaves, a killed one is replaced and one removed while the register workload (blind writes,
each kept as a sibling) runs, and the run is valid: nothing acknowledged lost, replicas converged on the
final ring."""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from dynamod.client import DynamoClient, NodeUnavailable

from .conftest import BIN, REPO, make_testbed


@pytest.fixture(scope="module")
def bed(tmp_path_factory):
    yield from make_testbed(tmp_path_factory, 5, "member")


def test_membership_changes_on_hosts_lose_nothing_and_converge_on_the_final_ring(bed, wheelhouse, tmp_path):
    finished = subprocess.run(
        [str(BIN / "dynacheck"), "run", "--testbed", "3", "--spares", "2", "--testbed-dir", str(bed.directory),
         "--nemesis", "membership", "--workload", "register", "--time-limit", "60", "--rate", "30",
         "--nemesis-interval", "3", "--nemesis-duration", "2", "--seed", "1", "--store", str(tmp_path),
         "--format", "json"], capture_output=True, text=True, timeout=900, cwd=REPO, check=False)
    assert finished.returncode in (0, 1, 2), finished.stdout[-2000:] + finished.stderr[-4000:]
    report = json.loads(finished.stdout)
    assert finished.returncode == 0, json.dumps(report["checkers"], indent=1)[:4000]
    run_dir = Path(report["run"])
    test = json.loads((run_dir / "test.json").read_text())
    assert test["nodes"] == ["h1", "h2", "h3"] and test["spare_nodes"] == ["h4", "h5"]
    ops = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    ran = Counter(op["value"]["plan"]["action"] for op in ops
                  if op["process"] == "nemesis" and op["f"] == "start-membership" and op["type"] == "ok")
    assert set(ran) == {"join", "leave", "replace", "remove"}, (ran, report["checkers"]["faults"].get("membership"))
    assert report["checkers"]["siblings"]["lost_count"] == 0
    assert report["checkers"]["convergence"]["replicas_from"] == "final ring's preference lists"
    assert set(test["final_ring"]["ownership"]) == set(test["final_nodes"])
    # The run stopped every node at its end, spares too: none answers.
    for address in test["node_addresses"].values():
        client = DynamoClient(address, timeout=2.0)
        with pytest.raises(NodeUnavailable):
            client.status()
        client.close()
