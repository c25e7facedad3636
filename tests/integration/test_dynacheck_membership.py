"""dynacheck's membership nemesis against a --local cluster with spare nodes (real dynamod processes, no
root): a node joins, one leaves, a killed one is replaced and one removed while the cart workload (adds,
removes, deletes) runs; no
acknowledged write is lost and the replicas converge on the final ring."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

BIN = Path(sys.executable).parent


def test_joins_leaves_replacements_and_removals_under_load_lose_nothing_and_converge_on_the_final_ring(tmp_path):
    # Seed 1 plans join, leave, replace, join, remove, join, leave... every 3-5 s; 60 s leave time for
    # each to run even on a loaded machine (a spare takes a few seconds to start).
    finished = subprocess.run(
        [str(BIN / "dynacheck"), "run", "--local", "3", "--spares", "2", "--nemesis", "membership",
         "--workload", "cart", "--time-limit", "60", "--rate", "30", "--nemesis-interval", "3",
         "--nemesis-duration", "2", "--seed", "1", "--store", str(tmp_path), "--format", "json"],
        capture_output=True, text=True, timeout=600, check=False)
    report = json.loads(finished.stdout)
    checkers = report["checkers"]
    assert finished.returncode == 0, json.dumps(checkers, indent=1)[:4000] + finished.stderr[-2000:]
    run_dir = Path(report["run"])
    test = json.loads((run_dir / "test.json").read_text())
    ops = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    ran = Counter(op["value"]["plan"]["action"] for op in ops
                  if op["process"] == "nemesis" and op["f"] == "start-membership" and op["type"] == "ok")
    assert set(ran) == {"join", "leave", "replace", "remove"}, ran
    assert checkers["faults"]["membership"]["changes_run"] == sum(ran.values())

    # The members changed; the final reads, the polls and the convergence verdict follow them.
    assert test["nodes"] == ["n1", "n2", "n3"] and test["spare_nodes"] == ["n4", "n5"]
    final = test["final_nodes"]
    assert final != test["nodes"] and test["final_ring"]["members"] == final and not test["final_ring"]["disagree"]
    assert set(test["final_ring"]["ownership"]) == set(final)
    final_reads = {op["node"] for op in ops if op.get("final") and op["type"] == "ok"}
    assert final_reads == set(final)
    assert checkers["convergence"]["valid"] is True
    assert checkers["convergence"]["replicas_from"] == "final ring's preference lists"
    assert checkers["siblings"]["lost_count"] == 0 and checkers["siblings"]["acknowledged_count"] > 200
    # Carts are emptied and deleted while the ring changes: removed items stay gone.
    assert checkers["siblings"]["removes_judged_count"] > 50 and checkers["siblings"]["resurrected_count"] == 0
    assert checkers["replicas"]["valid"] is True and checkers["replicas"]["pairs_not_judged_membership"] > 0
    # The replica monitor followed the members: it polled the nodes that joined as well.
    monitored = {op["node"] for op in ops if op["process"] == "monitor"}
    assert monitored >= set(final) | {"n1", "n2", "n3"}
