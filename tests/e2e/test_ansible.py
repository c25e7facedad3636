"""ansible/site.yml and rolling_restart.yml on testbed hosts, over real SSH."""

from __future__ import annotations

import re
import subprocess
import time

import pytest

from dynactl.inventory import load_hosts
from dynamod.client import DynamoClient

from .conftest import BIN, REPO, Writer, make_testbed, missing_writes


@pytest.fixture(scope="module")
def bed(tmp_path_factory):
    if not (BIN / "ansible-playbook").exists():
        pytest.skip("ansible-playbook is not installed (pip install -e '.[dev]')")
    yield from make_testbed(tmp_path_factory, 3, "ansible")


def playbook(bed, name: str, *extra: str) -> tuple[subprocess.CompletedProcess, dict[str, dict[str, int]]]:
    """Run one playbook against the testbed; returns the run and its PLAY RECAP per host."""
    result = subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", str(bed.directory / "inventory.ini"), str(REPO / "ansible" / name),
         *extra], capture_output=True, text=True, timeout=900, cwd=REPO / "ansible", check=False)
    recap = {}
    for host, counts in re.findall(r"^(\S+)\s+:\s+(ok=.*)$", result.stdout, re.MULTILINE):
        recap[host] = {key: int(value) for key, value in re.findall(r"(\w+)=(\d+)", counts)}
    return result, recap


@pytest.fixture(scope="module")
def provisioned(bed, wheelhouse):
    result, recap = playbook(bed, "site.yml")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert set(recap) >= {"h1", "h2", "h3"}
    return recap


def test_site_forms_one_cluster_that_reads_back_a_write_through_another_host(bed, provisioned):
    hosts = load_hosts(str(bed.directory / "inventory.ini"))
    DynamoClient(hosts[0].http).put("provisioned", b"by ansible")
    assert DynamoClient(hosts[1].http).get("provisioned").siblings == [b"by ansible"]
    status = DynamoClient(hosts[2].http).status()
    assert sorted((m["id"], m["status"]) for m in status["members"]) == [("h1", "up"), ("h2", "up"), ("h3", "up")]


def test_a_second_run_changes_nothing(bed, provisioned):
    result, recap = playbook(bed, "site.yml")
    assert result.returncode == 0, result.stdout[-4000:]
    assert {host: counts["changed"] for host, counts in recap.items()} == {host: 0 for host in recap}


def test_check_mode_on_a_provisioned_cluster_reports_no_change(bed, provisioned):
    result, recap = playbook(bed, "site.yml", "--check")
    assert result.returncode == 0, result.stdout[-4000:]
    assert all(counts["changed"] == 0 and counts["failed"] == 0 for counts in recap.values())


def test_rolling_restart_playbook_loses_no_acknowledged_write(bed, provisioned):
    hosts = load_hosts(str(bed.directory / "inventory.ini"))
    started = time.monotonic()
    with Writer([h.http for h in hosts]) as writer:
        result, recap = playbook(bed, "rolling_restart.yml")
    assert result.returncode == 0, result.stdout[-4000:]
    assert len(writer.acknowledged) > 300
    assert missing_writes(hosts[2].http, writer.acknowledged) == []
    elapsed = time.monotonic() - started
    uptimes = {h.name: DynamoClient(h.http).status()["uptime"] for h in hosts}
    assert all(uptime < elapsed for uptime in uptimes.values()), f"not every node restarted: {uptimes}"
