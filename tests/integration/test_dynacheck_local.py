"""dynacheck against a --local cluster (real dynamod processes, no root): the run lifecycle, the
store layout, analyze, usage errors, a crash stored as exit 3, and how client outcomes are classified."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dynacheck.client import Client
from dynactl.local import port_is_free
from dynamod.polling import wait_until

BIN = Path(sys.executable).parent


def dynacheck(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "dynacheck"), *args], capture_output=True, text=True, timeout=timeout,
                          check=False)


def test_a_local_cart_run_with_kills_pauses_and_clock_skew_is_valid_and_stored(tmp_path):
    finished = dynacheck("run", "--local", "3", "--workload", "cart", "--nemesis", "kill,pause,clock",
                         "--time-limit", "15", "--rate", "30", "--nemesis-interval", "0.5", "--nemesis-duration", "1",
                         "--seed", "1", "--store", str(tmp_path), "--format", "json")
    report = json.loads(finished.stdout)
    assert finished.returncode == 0, json.dumps(report["checkers"], indent=1)[:3000] + finished.stderr[-2000:]
    run_dir = Path(report["run"])
    assert run_dir.parent.name == "cart-vclock-kill-pause-clock"
    assert (tmp_path / "latest").resolve() == run_dir.resolve()
    for name in ("test.json", "history.jsonl", "results.json", "latency-raw.png", "rate.png", "timeline.html"):
        assert (run_dir / name).is_file(), name
    assert (run_dir / "nodes" / "n1" / "dynamod.log").is_file()
    ops = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    assert {op["type"] for op in ops} >= {"invoke", "ok"}
    assert all({"index", "time", "process", "type", "f"} <= op.keys() for op in ops)
    assert [op["index"] for op in ops] == list(range(len(ops)))
    started = {op["f"] for op in ops if op["process"] == "nemesis" and op["f"].startswith("start-")}
    assert started == {"start-kill", "start-pause", "start-clock"}
    # Each fault was seen to take effect (issue 16): a clock read back at its planned offset, a killed
    # node still down when its stop came, a paused node silent. A node the nemesis could not look at
    # (a clock moved while a kill held the node) is null, never a pass.
    seen = {f: [effect for op in ops if op["process"] == "nemesis" and op["f"] == f and op["type"] != "invoke"
                for effect in (op["value"] or {}).get("effect", {}).values()]
            for f in ("start-clock", "stop-kill", "start-pause")}
    assert all(seen.values()), seen
    clocks = [effect for effect in seen["start-clock"] if effect["took_effect"] is not None]
    assert clocks and all(abs(effect["observed"] - effect["planned"]) <= effect["tolerance"] for effect in clocks)
    assert all(effect["took_effect"] for effect in clocks + seen["stop-kill"] + seen["start-pause"]), seen
    assert all(effect["stayed_down"] for effect in seen["stop-kill"])
    assert report["checkers"]["faults"]["no_effect_count"] == 0
    final_reads = [op for op in ops if op.get("final") and op["type"] == "ok"]
    keys = {op["key"] for op in ops if isinstance(op["process"], int)}
    assert {f"cart-{i}" for i in range(5)} <= keys and any("-cold-" in key for key in keys)
    assert len(final_reads) == len(keys) * 3  # every key, hot and cold, through every node
    assert report["checkers"]["siblings"]["acknowledged_count"] > 20
    assert "dynacheck: running cart" in finished.stderr  # the live progress goes to stderr

    again = dynacheck("analyze", str(run_dir))
    assert again.returncode == 0, again.stdout + again.stderr
    assert "verdict: valid" in again.stdout and str(run_dir) in again.stdout

    # The simulator, on the same workload, faults and seed, agrees: valid, by the same checkers,
    # with the same faults run (the same plans: the schedule is the seed's, not the cluster's).
    simulated = dynacheck("sim", "--workload", "cart", "--nemesis", "kill,pause,clock", "--time-limit", "15",
                          "--rate", "30", "--concurrency", "10", "--nemesis-interval", "0.5", "--nemesis-duration",
                          "1", "--seed", "1", "--store", str(tmp_path / "sim"), "--format", "json")
    sim_report = json.loads(simulated.stdout)
    assert simulated.returncode == 0, json.dumps(sim_report["checkers"], indent=1)[:3000] + simulated.stderr[-2000:]
    assert set(sim_report["checkers"]) == set(report["checkers"])
    sim_ops = [json.loads(line) for line in (Path(sim_report["run_dir"]) / "history.jsonl").read_text().splitlines()]
    assert {op["f"] for op in sim_ops if op["process"] == "nemesis" and op["f"].startswith("start-")} == started
    real_test = json.loads((run_dir / "test.json").read_text())
    sim_test = json.loads((Path(sim_report["run_dir"]) / "test.json").read_text())
    assert sim_test["fault_schedule"] == real_test["fault_schedule"]


def test_a_local_run_with_corrupt_files_and_lost_power_keeps_every_acknowledged_add(tmp_path):
    if os.geteuid() != 0 or not Path("/dev/fuse").exists():
        pytest.skip("the power nemesis mounts lazyfs (FUSE): needs root and /dev/fuse")
    finished = dynacheck("run", "--local", "3", "--workload", "cart", "--nemesis", "corrupt,power",
                         "--time-limit", "12", "--rate", "30", "--nemesis-interval", "1.5", "--nemesis-duration", "1.5",
                         "--seed", "2", "--store", str(tmp_path), "--format", "json")
    report = json.loads(finished.stdout)
    assert finished.returncode == 0, json.dumps(report["checkers"], indent=1)[:3000] + finished.stderr[-2000:]
    ops = [json.loads(line) for line in (Path(report["run"]) / "history.jsonl").read_text().splitlines()]
    started = {op["f"] for op in ops
               if op["process"] == "nemesis" and op["type"] == "ok" and op["f"].startswith("start-")}
    assert started == {"start-corrupt", "start-power"}
    assert report["checkers"]["siblings"]["lost_count"] == 0
    assert report["checkers"]["convergence"]["valid"] is True
    # Every lazyfs mount was released before the run's scratch directory went: no daemon is left
    # serving a mount point that no longer exists.
    for pid in subprocess.run(["pgrep", "-f", "dynacheck.lazyfs serve"], capture_output=True, text=True,
                              check=False).stdout.split():
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        mountpoint = argv[argv.index(b"serve") + 2].decode()
        assert Path(mountpoint).parent.exists(), f"lazyfs {pid} left behind for {mountpoint}"


def test_a_local_register_run_keeps_every_blind_write_as_a_sibling(tmp_path):
    finished = dynacheck("run", "--local", "3", "--workload", "register", "--time-limit", "4", "--rate", "40",
                         "--keys", "3", "--store", str(tmp_path))
    assert finished.returncode == 0, finished.stdout + finished.stderr[-2000:]
    assert "verdict: valid" in finished.stdout


@pytest.mark.parametrize("args, reason", [
    (("--local", "3", "--nemesis", "partition"), "own addresses"),
    (("--local", "3", "--nemesis", "earthquake"), "unknown nemesis"),
    (("--local", "3", "--testbed", "3"), "choose one of"),
    (("--local", "3", "--n", "2", "--w", "3"), "must not exceed"),
])
def test_bad_options_exit_2_with_the_reason(tmp_path, args, reason):
    finished = dynacheck("run", *args, "--store", str(tmp_path))
    assert finished.returncode == 2
    assert reason in finished.stderr
    assert not list(tmp_path.iterdir())  # nothing was run, nothing stored


def test_analyze_of_something_that_is_not_a_run_is_a_usage_error(tmp_path):
    finished = dynacheck("analyze", str(tmp_path))
    assert finished.returncode == 2 and "not a run directory" in finished.stderr


def test_a_run_whose_nodes_cannot_be_reached_is_stored_as_crashed(tmp_path):
    nodes = tmp_path / "nodes.json"
    nodes.write_text(json.dumps({"hosts": [{"name": "far", "address": "127.0.0.1", "ssh_user": "nobody",
                                            "ssh_port": 1}]}))
    finished = dynacheck("run", "--nodes-file", str(nodes), "--time-limit", "2", "--store", str(tmp_path / "store"))
    assert finished.returncode == 3, finished.stdout + finished.stderr
    run_dir = (tmp_path / "store" / "latest").resolve()
    test = json.loads((run_dir / "test.json").read_text())
    assert "unreachable" in test["crashed"]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["crashed"] == test["crashed"]
    assert "verdict: crashed" in finished.stdout


def test_outcomes_a_failed_read_is_fail_an_unacknowledged_write_is_info(make_cluster):
    cluster = make_cluster()
    addresses = {node: cluster.cluster.node(node).http for node in cluster.ids}
    client = Client(addresses, "n1", timeout=5.0)
    added = client({"f": "add", "key": "cart", "value": 1})
    assert added["type"] == "ok" and added["supersedes"] == [] and added["version"]["dot"][1] >= 1
    second = client({"f": "add", "key": "cart", "value": 2})
    assert second["supersedes"] == [added["version"]["dot"]]
    read = client({"f": "read", "key": "cart", "value": None})
    assert read["type"] == "ok" and read["value"] == [1, 2]
    assert [version["dot"] for version in read["versions"]] == [second["version"]["dot"]]
    cluster.kill("n3")
    refused = Client(addresses, "n3", timeout=5.0, failover=False)({"f": "add", "key": "cart", "value": 3})
    assert refused["type"] == "fail"  # the read before the write could not even connect
    failing_over = Client(addresses, "n3", timeout=5.0)
    moved = failing_over({"f": "add", "key": "cart", "value": 3})
    assert moved["type"] == "ok" and moved["node"] != "n3"  # refused, so tried on the next node
    assert failing_over.current_node == moved["node"]  # and the client stays there
    assert moved["read_clock"]["vector"] or moved["read_clock"]["cloud"]
    unacknowledged = Client(addresses, "n1", timeout=5.0, failover=False)({"f": "write", "key": "cart", "value": 4})
    assert unacknowledged["type"] == "ok"  # W=2 of the two nodes left
    cluster.kill("n2")
    lonely = Client(addresses, "n1", timeout=5.0, failover=False)({"f": "write", "key": "cart", "value": 5})
    assert lonely["type"] == "info" and "quorum" in lonely["error"]  # 503: may or may not survive


def test_an_interrupted_run_heals_tears_down_and_stores_what_it_has(tmp_path):
    import signal

    # As a run in a terminal gets Ctrl-C: a suite started in the background by a shell without job
    # control (a CI script's `cmd &`) hands its children SIGINT ignored, and Python then installs
    # no KeyboardInterrupt handler (the run went on for its whole time limit and this test timed out).
    process = subprocess.Popen([str(BIN / "dynacheck"), "run", "--local", "3", "--nemesis", "pause",
                                "--nemesis-interval", "0.5", "--nemesis-duration", "60", "--time-limit", "120",
                                "--store", str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))

    def paused_history() -> Path | None:
        runs = list(tmp_path.glob("*/*/history.jsonl"))
        if runs and '"start-pause"' in runs[0].read_text() and '"type":"ok","time"' in runs[0].read_text():
            return runs[0]
        return None

    history = wait_until(paused_history, 90, interval=0.2)
    assert history is not None, "the run never paused a node"
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 3, stdout + stderr[-2000:]
    assert "interrupted" in stdout
    ops = [json.loads(line) for line in history.read_text().splitlines()]
    heals = [op for op in ops if op["process"] == "nemesis" and op["f"] == "stop-pause" and op["type"] == "ok"]
    assert heals  # the paused node was resumed before the nodes were stopped
    test = json.loads((history.parent / "test.json").read_text())
    assert test["crashed"] == "interrupted"
    for address in test["node_addresses"].values():  # every node was stopped
        assert port_is_free(int(address.rpartition(":")[2]))
    assert (history.parent / "results.json").is_file()
    for node in test["nodes"]:
        assert (history.parent / "nodes" / node / "dynamod.log").is_file()
