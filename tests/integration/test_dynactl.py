"""dynactl against real processes: local clusters, key commands, JSON output, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from dynamod.polling import wait_until
from tests.integration.conftest import free_base_port

pytestmark = pytest.mark.integration


def dynactl(*args: str, check: int | None = 0) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "dynactl", *args], capture_output=True, text=True, timeout=60)
    if check is not None:
        assert result.returncode == check, f"exit {result.returncode}: {result.stdout}\n{result.stderr}"
    return result


@pytest.fixture
def local_cluster(tmp_path):
    directory = str(tmp_path / "local")
    up = dynactl("--format", "json", "local", "up", "--nodes", "3", "--dir", directory,
                 "--base-port", str(free_base_port(3)), "--partitions", "16")
    yield directory, json.loads(up.stdout)
    dynactl("local", "down", "--dir", directory, "--wipe", check=None)


def test_local_up_writes_the_contract_cluster_json(local_cluster, tmp_path):
    directory, printed = local_cluster
    on_disk = json.loads((tmp_path / "local" / "cluster.json").read_text())
    assert printed == on_disk
    assert (on_disk["n"], on_disk["r"], on_disk["w"]) == (3, 2, 2)
    for node in on_disk["nodes"]:
        assert {"id", "http", "peer", "pid", "data_dir", "log"} <= set(node)
    table = dynactl("local", "status", "--dir", directory).stdout
    assert table.count("True") == 3


def test_put_get_delete_with_json_output_and_exit_codes(local_cluster):
    _, cluster = local_cluster
    node = ["--node", cluster["nodes"][0]["http"]]
    put = json.loads(dynactl(*node, "--format", "json", "put", "cart", "milk").stdout)
    assert put["context"]
    got = json.loads(dynactl(*node, "--format", "json", "get", "cart").stdout)
    assert got["found"] and got["siblings"] == ["bWlsaw=="]
    dynactl(*node, "delete", "cart", "--context", got["context"])
    missing = dynactl(*node, "--format", "json", "get", "cart", check=1)
    assert json.loads(missing.stdout)["found"] is False


def test_bad_input_exits_2_and_unreachable_node_exits_3(local_cluster):
    _, cluster = local_cluster
    node = ["--node", cluster["nodes"][0]["http"]]
    bad = dynactl(*node, "get", "k", "--r", "9", check=2)
    assert "r must be between 1 and n=3" in bad.stderr
    dynactl(*node, "put", "k", "--context", "!!!", "v", check=2)
    dynactl(*node, "put", check=2)
    gone = dynactl("--node", "127.0.0.1:1", "get", "k", check=3)
    assert "unreachable" in gone.stderr


def test_quorum_failure_exits_1_with_counts(local_cluster):
    directory, cluster = local_cluster
    dynactl("local", "kill", "n3", "--dir", directory)
    node = ["--node", cluster["nodes"][0]["http"]]
    failed = dynactl(*node, "--format", "json", "put", "k", "v", "--w", "3", check=1)
    assert json.loads(failed.stdout)["needed"] == 3
    dynactl(*node, "put", "k", "v", "--w", "2")
    dynactl("local", "start", "n3", "--dir", directory)
    dynactl(*node, "get", "k", "--r", "3")


def test_status_and_ring_show_the_cluster(local_cluster):
    directory, cluster = local_cluster
    node = ["--node", cluster["nodes"][0]["http"]]
    status = json.loads(dynactl(*node, "--format", "json", "status").stdout)
    assert {m["id"]: m["status"] for m in status["members"]} == {"n1": "up", "n2": "up", "n3": "up"}
    ring = json.loads(dynactl(*node, "--format", "json", "ring").stdout)
    assert len(ring["ownership"]) == 16 and all(len(set(p)) == 3 for p in ring["preference_lists"])
    assert "16 partitions" in dynactl(*node, "ring").stdout
    dynactl("local", "kill", "n2", "--dir", directory)
    assert wait_until(lambda: dynactl(*node, "status", check=None).returncode == 1, 10, interval=0), \
        "status never reported n2 down"  # no pause: each poll is a dynactl process


def test_stats_summarises_the_metrics(local_cluster):
    _, cluster = local_cluster
    node = ["--node", cluster["nodes"][0]["http"]]
    dynactl(*node, "put", "s", "v")
    dynactl(*node, "get", "s")
    dynactl(*node, "get", "missing", check=1)
    stats = json.loads(dynactl(*node, "--format", "json", "stats").stdout)
    assert stats["operations"]["put"]["by_code"] == {"204": 1}
    assert stats["operations"]["get"]["by_code"] == {"200": 1, "404": 1}
    assert stats["operations"]["get"]["p99_le_ms"] is not None
    assert stats["counters"]["storage_batches"] >= 1
    put_stages = stats["stages"]["put"]  # the PUT this node coordinated, stage by stage
    assert [put_stages[stage]["count"] for stage in ("parse", "coordinate", "local", "quorum", "respond")] \
        == [1] * 5
    assert put_stages["remote"]["count"] == 2  # N=3: two remote replicas answered
    assert stats["stages"]["get"]["parse"]["count"] == 2
    text = dynactl(*node, "stats").stdout
    assert "requests" in text and "put stages, p50/p99 ms: parse " in text
