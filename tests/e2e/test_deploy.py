"""dynactl deploy / start / stop / logs / rolling-restart on testbed hosts, over real SSH."""

from __future__ import annotations

import json
import subprocess

import pytest

from dynactl.inventory import load_hosts
from dynamod.client import DynamoClient

from .conftest import Writer, dynactl, make_testbed, missing_writes


@pytest.fixture(scope="module")
def bed(tmp_path_factory):
    yield from make_testbed(tmp_path_factory, 3, "deploy")


@pytest.fixture(scope="module")
def inventory(bed, wheelhouse):
    path = str(bed.directory / "inventory.ini")
    deployed = dynactl("deploy", "--inventory", path)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    return path


def test_deploy_forms_one_cluster_that_reads_back_through_another_host(inventory):
    hosts = load_hosts(inventory)
    writer, reader = DynamoClient(hosts[0].http), DynamoClient(hosts[2].http)
    writer.put("deployed", b"through h1")
    assert reader.get("deployed").siblings == [b"through h1"]
    status = json.loads(dynactl("--format", "json", "--node", hosts[1].http, "status").stdout)
    assert sorted((m["id"], m["status"]) for m in status["members"]) == [("h1", "up"), ("h2", "up"), ("h3", "up")]


def test_a_second_deploy_changes_nothing_and_restarts_nothing(inventory):
    before = json.loads(dynactl("--format", "json", "deploy", "--inventory", inventory).stdout)
    for name, result in before["hosts"].items():
        assert result["ok"], result
        assert result["stdout"].startswith("unchanged; already running"), (name, result["stdout"])


def test_stop_start_and_logs_act_on_the_named_host_only(inventory):
    hosts = load_hosts(inventory)
    stopped = dynactl("stop", "--inventory", inventory, "h3")
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stdout.strip() == "h3: ok (stopped)"
    status = DynamoClient(hosts[0].http).status()
    assert {m["id"] for m in status["members"]} == {"h1", "h2", "h3"}
    started = dynactl("start", "--inventory", inventory, "h3")
    assert started.returncode == 0, started.stderr
    assert "started pid" in started.stdout
    logs = dynactl("logs", "--inventory", inventory, "-n", "5")
    assert logs.returncode == 0
    for name in ("h1", "h2", "h3"):
        assert f"== {name} ==" in logs.stdout
    assert '"level"' in logs.stdout  # the nodes' JSON-lines logs


def test_rolling_restart_loses_no_acknowledged_write(inventory):
    hosts = load_hosts(inventory)
    with Writer([h.http for h in hosts]) as writer:
        restarted = dynactl("rolling-restart", "--inventory", inventory)
    assert restarted.returncode == 0, restarted.stdout + restarted.stderr
    assert "restarted h1, h2, h3" in restarted.stdout
    for name in ("h1", "h2", "h3"):
        assert f"{name}: healthy" in restarted.stderr
    assert len(writer.acknowledged) > 500, "the writer made too little progress to show anything"
    assert missing_writes(hosts[1].http, writer.acknowledged) == []
    print(f"rolling restart: {len(writer.acknowledged)} writes acknowledged, {writer.unacknowledged} not, 0 lost")


def test_bad_hosts_get_one_clear_line_each_and_a_non_zero_exit(bed, inventory, tmp_path):
    """An unreachable host, a wrong key and a host without Python fail on their own lines; the
    good host is still deployed and the summary says so."""
    text = (bed.directory / "inventory.ini").read_text()
    h1_line = next(line for line in text.splitlines() if line.startswith("h1 "))
    address = h1_line.split("ansible_host=")[1].split()[0]
    unused = address.rsplit(".", 1)[0] + ".99"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "wrong")], check=True)
    bad = text.replace("[all:vars]", "\n".join([
        f"ghost ansible_host={unused}",
        f"wrongkey ansible_host={address} ansible_ssh_private_key_file={tmp_path / 'wrong'}",
        f"nopython ansible_host={address} ansible_python_interpreter=/nonexistent/python3 "
        f"dynamod_home={tmp_path / 'nopython'}",
        "", "[all:vars]", "dynamod_founders=h1,h2,h3"]))
    path = tmp_path / "bad.ini"
    path.write_text(bad)
    result = dynactl("deploy", "--inventory", str(path), "h1", "ghost", "wrongkey", "nopython", timeout=120)
    assert result.returncode == 1
    lines = dict(line.split(": ", 1) for line in result.stdout.strip().splitlines())
    assert lines["h1"].startswith("ok")
    assert lines["ghost"].startswith("unreachable")
    assert "authentication failed" in lines["wrongkey"]
    assert "no Python at /nonexistent/python3" in lines["nopython"]
    assert "failed on ghost, wrongkey, nopython; it went ahead on h1" in result.stderr

    missing = dynactl("deploy", "--inventory", str(tmp_path / "absent.ini"))
    assert missing.returncode == 2
    assert "does not exist" in missing.stderr
