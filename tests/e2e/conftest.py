"""Test hosts on this machine (network namespaces with sshd), made and removed by dynactl's Testbed.

These tests need root and the Debian packages scripts/bootstrap installs; without them they are
skipped with the reason.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

from dynactl.package import build_wheelhouse
from dynactl.testbed import MACHINE_TOOLS, REQUIRED_TOOLS, Testbed
from dynamod.client import DynamoClient

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[2]


def require_testbed() -> None:
    if os.geteuid() != 0:
        pytest.skip("testbed tests need root (network namespaces, veth links, sshd)")
    for tool, package in REQUIRED_TOOLS.items():
        if not (shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin")):
            pytest.skip(f"{tool} is missing (apt-get install {package}; scripts/bootstrap does it as root)")


def require_machines() -> None:
    require_testbed()
    for tool, package in MACHINE_TOOLS.items():
        if not shutil.which(tool):
            pytest.skip(f"{tool} is missing (apt-get install {package}; scripts/bootstrap does it as root)")


def make_testbed(tmp_path_factory: pytest.TempPathFactory, hosts: int, name: str, kind: str = "netns"):
    """Yield an up testbed of ``hosts`` hosts of ``kind``; always taken down and deleted afterwards.
    Its directory is world-traversable (pytest's own are not): nodes may run as an unprivileged
    user. Machines boot from the checkout's cached root file system (the bootstrap builds it)."""
    require_machines() if kind == "machine" else require_testbed()
    directory = Path(tempfile.mkdtemp(prefix=f"dynamo-e2e-{name}-", dir="/tmp"))
    directory.chmod(0o755)
    bed = Testbed(str(directory), rootfs_cache=str(REPO / ".dynamo" / "rootfs"))
    try:
        bed.up(hosts, kind)
        yield bed
    finally:
        bed.down()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def wheelhouse() -> dict:
    """The project's wheels for offline installs on the hosts (built once per run)."""
    require_testbed()
    return build_wheelhouse(REPO / ".dynamo" / "wheelhouse", REPO)


def playbook(bed: Testbed, name: str, *extra: str,
             inventory: Path | None = None) -> tuple[subprocess.CompletedProcess, dict[str, dict[str, int]]]:
    """Run one playbook against the testbed (its inventory.ini unless ``inventory``); returns the
    run and its PLAY RECAP per host."""
    result = subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", str(inventory or bed.directory / "inventory.ini"),
         str(REPO / "ansible" / name), *extra], capture_output=True, text=True, timeout=900, cwd=REPO / "ansible",
        check=False)
    recap = {}
    for host, counts in re.findall(r"^(\S+)\s+:\s+(ok=.*)$", result.stdout, re.MULTILINE):
        recap[host] = {key: int(value) for key, value in re.findall(r"(\w+)=(\d+)", counts)}
    return result, recap


def require_ansible() -> None:
    if not (BIN / "ansible-playbook").exists():
        pytest.skip("ansible-playbook is not installed (pip install -e '.[dev]')")


def provision(bed: Testbed) -> dict[str, dict[str, int]]:
    """site.yml on every host of ``bed`` (it must succeed); returns its PLAY RECAP."""
    result, recap = playbook(bed, "site.yml")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert set(recap) >= {host["name"] for host in bed.record["hosts"]}
    return recap


def dynactl(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run the real dynactl command line."""
    return subprocess.run([str(BIN / "dynactl"), *args], capture_output=True, text=True, timeout=timeout,
                          cwd=REPO, check=False)


class Writer:
    """Clients writing fresh keys through every node until stopped; records what was acknowledged."""

    def __init__(self, addresses: list[str], threads: int = 4):
        self.addresses = addresses
        self.acknowledged: list[str] = []
        self.unacknowledged = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._write, args=(n,), daemon=True) for n in range(threads)]

    def _write(self, number: int) -> None:
        clients = [DynamoClient(address, timeout=5.0) for address in self.addresses]
        index = 0
        while not self._stop.is_set():
            key = f"writer{number}-{index}"
            client = clients[index % len(clients)]
            index += 1
            try:
                client.put(key, key.encode())
                self.acknowledged.append(key)
            except Exception:  # noqa: BLE001 - a node being restarted: not acknowledged
                self.unacknowledged += 1
                self._stop.wait(0.02)

    def __enter__(self) -> Writer:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)


def missing_writes(address: str, keys: list[str]) -> list[str]:
    """The keys whose acknowledged value a quorum read does not return."""
    client = DynamoClient(address, timeout=10.0)
    try:
        return [key for key in keys if key.encode() not in client.get(key).siblings]
    finally:
        client.close()
