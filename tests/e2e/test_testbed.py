"""dynactl testbed: hosts reachable over real SSH, isolated addresses, and nothing left behind."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from dynactl.inventory import load_hosts
from dynactl.remote import SshHosts
from dynactl.testbed import Testbed

from .conftest import REPO, dynactl, require_machines, require_testbed


def _leftovers(bed: Testbed, pids: list[int]) -> list[str]:
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    left = [f"namespace {line.split()[0]}" for line in namespaces.splitlines() if line.startswith(bed.prefix)]
    left += [f"link {line.split(':')[1].strip()}" for line in links.splitlines() if f" {bed.prefix}" in line]
    for pid in pids:
        try:
            state = open(f"/proc/{pid}/stat").read().rpartition(")")[2].split()[0]
        except OSError:
            continue
        if state != "Z":
            left.append(f"process {pid}")
    return left


@pytest.fixture
def open_dir():
    """A directory every user can traverse (pytest's tmp_path is under a 0700 one, which a netns
    testbed refuses: its nodes run as the service user)."""
    directory = Path(tempfile.mkdtemp(prefix="dynamo-e2e-testbed-", dir="/tmp"))
    directory.chmod(0o755)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def test_testbed_up_gives_hosts_reachable_over_ssh_and_down_removes_everything(open_dir):
    require_testbed()
    directory = open_dir / "bed"
    up = dynactl("--format", "json", "testbed", "up", "--hosts", "3", "--dir", str(directory))
    assert up.returncode == 0, up.stderr
    bed = Testbed(str(directory))
    bed.load()
    pids = [h["sshd_pid"] for h in bed.record["hosts"]]
    try:
        nodes = json.loads((directory / "nodes.json").read_text())
        assert [h["name"] for h in nodes["hosts"]] == ["h1", "h2", "h3"]
        assert all({"name", "address", "ssh_user", "ssh_key"} <= set(h) for h in nodes["hosts"])
        inventory = (directory / "inventory.ini").read_text()
        assert "ansible_python_interpreter=/usr/bin/python3" in inventory
        hosts = load_hosts(str(directory / "inventory.ini"))
        with SshHosts(hosts) as control:
            results = control.run("ip -4 -o addr show scope global")
            # A process left running in a host (as a node would be) must be ended by down.
            control.run("nohup sleep 600 >/dev/null 2>&1 &")
            sleepers = control.run("pgrep -f 'sleep 600' || true")
        for host in hosts:
            assert results[host.name].ok, results[host.name].line()
            # each host sees exactly its own address: one namespace per host
            assert results[host.name].stdout.count("inet ") == 1
            assert f" {host.address}/24 " in results[host.name].stdout
        pids += [int(p) for r in sleepers.values() for p in r.stdout.split()]
        assert len(pids) >= 6

        again = dynactl("testbed", "up", "--hosts", "3", "--dir", str(directory))
        assert again.returncode == 0, again.stderr
        bed.load()
        assert [h["sshd_pid"] for h in bed.record["hosts"]] == pids[:3], "up is idempotent: same sshd processes"
    finally:
        down = dynactl("testbed", "down", "--dir", str(directory))
    assert down.returncode == 0, down.stderr
    assert _leftovers(bed, pids) == []


def test_down_after_a_crash_finds_what_the_lost_record_named(open_dir):
    """A crashed up can lose testbed.json; names derive from DIR, so down still finds them."""
    require_testbed()
    directory = open_dir / "crashed"
    bed = Testbed(str(directory))
    bed.up(2)
    pids = [h["sshd_pid"] for h in bed.record["hosts"]]
    (directory / "testbed.json").unlink()
    removed = Testbed(str(directory)).down()
    assert any("namespace" in item for item in removed)
    assert _leftovers(bed, pids) == []


def test_testbed_refuses_without_root_and_bad_sizes(tmp_path):
    require_testbed()
    result = dynactl("testbed", "up", "--hosts", "0", "--dir", str(tmp_path / "x"))
    assert result.returncode == 2
    assert "between 1 and" in result.stderr
    as_nobody = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                                str(__import__("sys").executable), "-m", "dynactl", "testbed", "up",
                                "--dir", str(tmp_path / "y")], capture_output=True, text=True, check=False)
    if "Permission denied" in as_nobody.stderr and "needs root" not in as_nobody.stderr:
        pytest.skip("the venv is not readable by nobody here")
    assert as_nobody.returncode == 2, as_nobody.stderr
    assert "needs root" in as_nobody.stderr


def test_machine_testbed_boots_systemd_hosts_over_ssh_is_idempotent_and_down_removes_everything(tmp_path):
    require_machines()
    directory = tmp_path / "machines"
    up = dynactl("--format", "json", "testbed", "up", "--hosts", "2", "--kind", "machine", "--dir", str(directory),
                 "--rootfs-cache", str(REPO / ".dynamo" / "rootfs"))
    assert up.returncode == 0, up.stderr
    bed = Testbed(str(directory))
    bed.load()
    supervisors = [h["supervisor_pid"] for h in bed.record["hosts"]]
    try:
        assert {h["kind"] for h in json.loads(up.stdout)["hosts"]} == {"machine"}
        hosts = load_hosts(str(directory / "inventory.ini"))
        with SshHosts(hosts) as control:
            results = control.run("ps -p 1 -o comm=; hostname; systemctl is-system-running --wait; iptables -S")
        for host in hosts:
            assert results[host.name].ok, results[host.name].line()
            assert results[host.name].stdout.split()[:3] == ["systemd", host.name, "running"]
        again = dynactl("testbed", "up", "--hosts", "2", "--dir", str(directory))
        assert again.returncode == 0, again.stderr
        bed.load()
        assert [h["supervisor_pid"] for h in bed.record["hosts"]] == supervisors, "up is idempotent"
        other = dynactl("testbed", "up", "--hosts", "2", "--kind", "netns", "--dir", str(directory))
        assert other.returncode == 2 and "take it down first" in other.stderr
    finally:
        down = dynactl("testbed", "down", "--dir", str(directory))
    assert down.returncode == 0, down.stderr
    assert _leftovers(bed, supervisors) == []
    mounts = Path("/proc/self/mounts").read_text()
    assert str(directory) not in mounts
    assert not [p for p in Path("/sys/fs/cgroup").glob(f"*/{bed.prefix}-*")]
