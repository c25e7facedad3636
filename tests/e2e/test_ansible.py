"""ansible/site.yml on testbed hosts (namespaces, no systemd: the role's dynactl branch), over real
SSH, and --check on the result; then the same cluster secured by site.yml with dynamod_tls (mutual
TLS between nodes, HTTPS with authentication), a second run that changes nothing, and a dynacheck
--nodes-file --tls run against it. rolling_restart.yml runs under writes on systemd machines
(test_machines.py), and dynactl rolling-restart on these hosts (test_deploy.py)."""

from __future__ import annotations

import json
import subprocess

import pytest

from dynactl.inventory import load_hosts
from dynamod.client import ClientError, Credentials, DynamoClient, NodeUnavailable

from .conftest import BIN, REPO, make_testbed, playbook, provision, require_ansible


@pytest.fixture(scope="module")
def bed(tmp_path_factory):
    require_ansible()
    yield from make_testbed(tmp_path_factory, 3, "ansible")


@pytest.fixture(scope="module")
def provisioned(bed, wheelhouse):
    return provision(bed)


def test_site_forms_one_cluster_that_reads_back_a_write_through_another_host(bed, provisioned):
    hosts = load_hosts(str(bed.directory / "inventory.ini"))
    DynamoClient(hosts[0].http).put("provisioned", b"by ansible")
    assert DynamoClient(hosts[1].http).get("provisioned").siblings == [b"by ansible"]
    status = DynamoClient(hosts[2].http).status()
    assert sorted((m["id"], m["status"]) for m in status["members"]) == [("h1", "up"), ("h2", "up"), ("h3", "up")]


def test_check_mode_on_a_provisioned_cluster_reports_no_change(bed, provisioned):
    result, recap = playbook(bed, "site.yml", "--check")
    assert result.returncode == 0, result.stdout[-4000:]
    assert all(counts["changed"] == 0 and counts["failed"] == 0 for counts in recap.values())


@pytest.fixture(scope="module")
def secured(bed, provisioned):
    """The provisioned cluster secured: the testbed's inventory with dynamod_tls (the CA on the
    controller in the testbed dir, the hosts naming the controller's admin certificate for dynactl
    and dynacheck), site.yml run again over the same hosts (their software is in place: only the
    TLS files and node.toml change, and each node restarts). Last in this module: the plain tests
    above run first."""
    certs = bed.directory / "certs"
    admin = Credentials(ca=str(certs / "ca.pem"), cert=str(certs / "clients" / "ansible.pem"),
                        key=str(certs / "clients" / "ansible.key"))
    inventory = bed.directory / "inventory-tls.ini"
    inventory.write_text((bed.directory / "inventory.ini").read_text()
                         + f"\n[dynamod:vars]\ndynamod_tls=true\ndynamod_tls_dir={certs}\n"
                         + f"dynactl_tls='{json.dumps(admin.as_json())}'\n")
    result, recap = playbook(bed, "site.yml", inventory=inventory)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    return inventory, admin, recap


def test_site_with_tls_makes_a_secured_cluster_and_a_second_run_changes_nothing(bed, secured):
    inventory, admin, _ = secured
    hosts = load_hosts(str(inventory))
    DynamoClient(hosts[0].http, credentials=admin).put("secured", b"by ansible")
    assert DynamoClient(hosts[1].http, credentials=admin).get("secured").siblings == [b"by ansible"]
    with pytest.raises(NodeUnavailable):
        DynamoClient(hosts[0].http, timeout=3).status()  # plaintext: no HTTP answer
    with pytest.raises(ClientError) as refused:
        DynamoClient(hosts[0].http, credentials=Credentials(ca=admin.ca)).status()
    assert refused.value.status == 401
    key = bed.host_dir("h1") / "opt" / "tls" / "node.key"
    assert oct(key.stat().st_mode & 0o777) == "0o600" and not (bed.host_dir("h1") / "opt" / "tls" / "ca.key").exists()
    result, recap = playbook(bed, "site.yml", inventory=inventory)
    assert result.returncode == 0, result.stdout[-3000:]
    assert all(counts["changed"] == 0 for counts in recap.values()), recap


def test_a_short_dynacheck_run_against_the_secured_cluster_is_valid(bed, secured, tmp_path):
    inventory, _, _ = secured
    finished = subprocess.run(
        [str(BIN / "dynacheck"), "run", "--nodes-file", str(inventory), "--tls", "--workload", "register",
         "--nemesis", "none", "--time-limit", "5", "--store", str(tmp_path), "--format", "json"],
        capture_output=True, text=True, timeout=600, cwd=REPO, check=False)
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    report = json.loads(finished.stdout)
    assert json.loads((tmp_path / "latest" / "test.json").read_text())["tls"] is True
    assert report["checkers"]["convergence"]["valid"] is True
