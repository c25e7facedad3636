"""Test hosts on one machine: network namespaces on a bridge, each with its own address and sshd.

``up`` makes N hosts ``h1..hN``: a namespace with loopback up, a veth pair whose outer end is on a
bridge in the root namespace (the bridge holds ``.254`` so this machine reaches every host), its
own sshd (host key, authorized key and client key generated into DIR) and its own directories for
the node's home, data, logs and faketime file. It writes ``DIR/inventory.ini`` (Ansible) and
``DIR/nodes.json`` (CONTRACT). Everything is recorded in ``DIR/testbed.json`` *before* it is made,
so ``down`` removes exactly what was created, also after a crash half-way. Names derive from DIR,
so two testbeds in two directories never collide. Root is required.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
from pathlib import Path
from typing import Any

from dynactl import process
from dynamod.polling import wait_until

DEFAULT_DIR = ".dynamo/testbed"
MAX_HOSTS = 200
SSH_DEADLINE_SECONDS = 15.0
PYTHON_ON_HOSTS = "/usr/bin/python3"  # not the PATH python3: a pyenv shim that fails over SSH
REQUIRED_TOOLS = {"ip": "iproute2", "sshd": "openssh-server", "ssh-keygen": "openssh-client",
                  "iptables": "iptables"}


class TestbedError(Exception):
    """The testbed cannot be made or removed; the message says why."""

    __test__ = False  # not a pytest test class


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise TestbedError(f"{' '.join(argv)} failed: {result.stderr.strip() or result.stdout.strip()}")
    return result


def _tool(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if path is None:
        raise TestbedError(f"{name} is missing: apt-get install {REQUIRED_TOOLS[name]}")
    return path


class Testbed:
    """The testbed recorded in ``directory/testbed.json``."""

    __test__ = False

    def __init__(self, directory: str = DEFAULT_DIR):
        self.directory = Path(directory).resolve()
        self.record_path = self.directory / "testbed.json"
        digest = hashlib.sha256(str(self.directory).encode()).hexdigest()
        self.prefix = "dt" + digest[:5]  # interface names must stay within 15 characters
        self.record: dict[str, Any] = {"prefix": self.prefix, "hosts": [], "forward_rule": None}

    # -- names ------------------------------------------------------------------------------------

    @property
    def bridge(self) -> str:
        return f"{self.prefix}br"

    def namespace(self, name: str) -> str:
        return f"{self.prefix}-{name}"

    def outer_link(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def host_dir(self, name: str) -> Path:
        return self.directory / "hosts" / name

    @property
    def key_path(self) -> Path:
        return self.directory / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.directory / "known_hosts"

    # -- record -----------------------------------------------------------------------------------

    def load(self) -> bool:
        try:
            self.record = json.loads(self.record_path.read_text())
        except FileNotFoundError:
            return False
        except ValueError as exc:
            raise TestbedError(f"{self.record_path} is not valid JSON: {exc}") from exc
        return True

    def _save(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        temporary = self.record_path.with_suffix(".tmp")
        temporary.write_text(json.dumps(self.record, indent=2) + "\n")
        temporary.replace(self.record_path)

    def _host_record(self, name: str) -> dict[str, Any] | None:
        return next((h for h in self.record["hosts"] if h["name"] == name), None)

    # -- up ---------------------------------------------------------------------------------------

    def up(self, count: int) -> list[dict[str, Any]]:
        """Make (or repair) exactly ``count`` hosts; returns the hosts as nodes.json lists them."""
        _require_root()
        if not 1 <= count <= MAX_HOSTS:
            raise TestbedError(f"--hosts must be between 1 and {MAX_HOSTS}")
        for tool in REQUIRED_TOOLS:
            _tool(tool)
        self.load()
        self.record.setdefault("subnet", self._free_subnet())
        self._save()
        self._ensure_keys()
        self._ensure_bridge()
        names = [f"h{i}" for i in range(1, count + 1)]
        for extra in [h["name"] for h in self.record["hosts"] if h["name"] not in names]:
            self._remove_host(extra)
        for index, name in enumerate(names, start=1):
            self._ensure_host(name, index)
        self._write_known_hosts()
        hosts = self.hosts()
        self._write_inventory(hosts)
        (self.directory / "nodes.json").write_text(json.dumps({"hosts": hosts}, indent=2) + "\n")
        for host in hosts:
            _wait_for_port(host["address"], 22, SSH_DEADLINE_SECONDS)
        return hosts

    def _free_subnet(self) -> str:
        routes = _run("ip", "-4", "route", "show", "table", "all").stdout
        taken = []
        for word in routes.split():
            try:
                taken.append(ipaddress.ip_network(word, strict=False))
            except ValueError:
                continue
        start = int(self.prefix[2:], 16)
        for attempt in range(256):
            value = (start + attempt * 7919) % (64 * 256)
            candidate = ipaddress.ip_network(f"10.{192 + value // 256}.{value % 256}.0/24")
            if not any(candidate.overlaps(net) for net in taken if net.prefixlen > 0):
                return str(candidate)
        raise TestbedError("no free 10.192.0.0/10 subnet for the testbed")

    def address(self, index: int) -> str:
        return str(ipaddress.ip_network(self.record["subnet"]).network_address + index)

    @property
    def bridge_address(self) -> str:
        return self.address(254)

    def _ensure_keys(self) -> None:
        if not self.key_path.exists():
            _run(_tool("ssh-keygen"), "-q", "-t", "ed25519", "-N", "", "-C", f"dynactl-testbed-{self.prefix}",
                 "-f", str(self.key_path))
        authorized = self.directory / "authorized_keys"
        authorized.write_text(self.key_path.with_suffix(".pub").read_text())
        authorized.chmod(0o600)

    def _ensure_bridge(self) -> None:
        self.record["bridge"] = self.bridge
        self._save()
        if _run("ip", "link", "show", self.bridge, check=False).returncode != 0:
            _run("ip", "link", "add", self.bridge, "type", "bridge")
        addresses = _run("ip", "-4", "-o", "addr", "show", "dev", self.bridge).stdout
        if f" {self.bridge_address}/" not in addresses:
            _run("ip", "addr", "add", f"{self.bridge_address}/24", "dev", self.bridge)
        _run("ip", "link", "set", self.bridge, "up")
        self._ensure_forwarding_rule()

    def _ensure_forwarding_rule(self) -> None:
        """Where bridged traffic passes iptables and FORWARD is not wide open (Docker hosts, say),
        let this bridge's traffic through; the rule is recorded and removed by down."""
        bridged = Path("/proc/sys/net/bridge/bridge-nf-call-iptables")
        if not bridged.exists() or bridged.read_text().strip() != "1":
            return
        rules = _run("iptables", "-w", "-S", "FORWARD").stdout.strip().splitlines()
        rule = ["FORWARD", "-i", self.bridge, "-o", self.bridge, "-j", "ACCEPT"]
        if rules == ["-P FORWARD ACCEPT"] or _run("iptables", "-w", "-C", *rule, check=False).returncode == 0:
            return
        self.record["forward_rule"] = rule
        self._save()
        _run("iptables", "-w", "-I", *rule)

    def _ensure_host(self, name: str, index: int) -> None:
        namespace, outer = self.namespace(name), self.outer_link(name)
        host = self._host_record(name)
        if host is None:
            host = {"name": name, "namespace": namespace, "link": outer, "address": self.address(index),
                    "sshd_pid": None}
            self.record["hosts"].append(host)
            self._save()
        if namespace not in _namespaces():
            _run("ip", "netns", "add", namespace)
        if _run("ip", "link", "show", outer, check=False).returncode != 0:
            _run("ip", "link", "add", outer, "type", "veth", "peer", "name", "eth0", "netns", namespace)
        _run("ip", "link", "set", outer, "master", self.bridge, "up")
        inner = _run("ip", "-n", namespace, "-4", "-o", "addr", "show", "dev", "eth0").stdout
        if f" {host['address']}/" not in inner:
            _run("ip", "-n", namespace, "addr", "add", f"{host['address']}/24", "dev", "eth0")
        _run("ip", "-n", namespace, "link", "set", "lo", "up")
        _run("ip", "-n", namespace, "link", "set", "eth0", "up")
        home = self.host_dir(name)
        for sub in ("opt", "data", "logs", "faketime"):
            (home / sub).mkdir(parents=True, exist_ok=True)
        self._ensure_sshd(host, home)

    def _ensure_sshd(self, host: dict[str, Any], home: Path) -> None:
        config = home / "sshd_config"
        if _is_our_sshd(host.get("sshd_pid"), config):
            return
        host_key = home / "ssh_host_ed25519_key"
        if not host_key.exists():
            _run(_tool("ssh-keygen"), "-q", "-t", "ed25519", "-N", "", "-C", host["name"], "-f", str(host_key))
        pidfile = home / "sshd.pid"
        config.write_text("\n".join([
            f"ListenAddress {host['address']}:22",
            f"HostKey {host_key}",
            f"AuthorizedKeysFile {self.directory / 'authorized_keys'}",
            f"PidFile {pidfile}",
            "PermitRootLogin prohibit-password",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            "StrictModes no",  # DIR may sit in a group-writable tree; the keys are ours anyway
            "MaxStartups 100:30:200",
            "MaxSessions 100",
            "Subsystem sftp internal-sftp",
        ]) + "\n")
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation directory
        pidfile.unlink(missing_ok=True)
        _run("ip", "netns", "exec", host["namespace"], _tool("sshd"), "-f", str(config), "-E", str(home / "sshd.log"))
        sshd_pid = wait_until(lambda: _read_pid(pidfile), SSH_DEADLINE_SECONDS, interval=0.02)
        if sshd_pid is None:
            log = (home / "sshd.log").read_text(errors="replace").strip() if (home / "sshd.log").exists() else ""
            raise TestbedError(f"sshd on {host['name']} wrote no pidfile within {SSH_DEADLINE_SECONDS:.0f}s; "
                               f"{home / 'sshd.log'} says: {log[-300:] or '(nothing)'}")
        host["sshd_pid"] = sshd_pid
        self._save()

    def _write_known_hosts(self) -> None:
        lines = []
        for host in self.record["hosts"]:
            public = (self.host_dir(host["name"]) / "ssh_host_ed25519_key.pub").read_text().split()
            lines.append(f"{host['address']} {public[0]} {public[1]}")
        self.known_hosts.write_text("\n".join(lines) + "\n")

    def hosts(self) -> list[dict[str, Any]]:
        """The hosts as nodes.json lists them (CONTRACT fields first, then the testbed's own)."""
        result = []
        for host in self.record["hosts"]:
            home = self.host_dir(host["name"])
            result.append({
                "name": host["name"], "address": host["address"], "ssh_user": "root", "ssh_key": str(self.key_path),
                "ssh_port": 22, "known_hosts": str(self.known_hosts), "namespace": host["namespace"],
                "python": PYTHON_ON_HOSTS, "home": str(home / "opt"), "data_dir": str(home / "data"),
                "log_dir": str(home / "logs"), "faketime_file": str(home / "faketime" / "clock")})
        return result

    def _write_inventory(self, hosts: list[dict[str, Any]]) -> None:
        lines = ["# Written by `dynactl testbed up`: the test hosts of this machine.", "[dynamod]"]
        for host in hosts:
            lines.append(f"{host['name']} ansible_host={host['address']} dynamod_home={host['home']} "
                         f"dynamod_data_dir={host['data_dir']} dynamod_log_dir={host['log_dir']}")
        lines += ["", "[all:vars]", "ansible_user=root", f"ansible_ssh_private_key_file={self.key_path}",
                  f"ansible_python_interpreter={PYTHON_ON_HOSTS}",
                  f"ansible_ssh_common_args='-o UserKnownHostsFile={self.known_hosts} -o StrictHostKeyChecking=yes'"]
        (self.directory / "inventory.ini").write_text("\n".join(lines) + "\n")

    # -- down -------------------------------------------------------------------------------------

    def down(self) -> list[str]:
        """Remove every namespace, link, rule and process this testbed created; returns what went."""
        _require_root()
        self.load()
        removed = []
        names = {h["name"] for h in self.record["hosts"]}
        # A crash before the record was written still leaves names derived from DIR: find those too.
        for namespace in _namespaces():
            if namespace.startswith(f"{self.prefix}-"):
                names.add(namespace[len(self.prefix) + 1:])
        for name in sorted(names):
            removed += self._remove_host(name)
        if _run("ip", "link", "show", self.bridge, check=False).returncode == 0:
            _run("ip", "link", "del", self.bridge)
            removed.append(f"bridge {self.bridge}")
        rule = self.record.get("forward_rule")
        if rule and _run("iptables", "-w", "-C", *rule, check=False).returncode == 0:
            _run("iptables", "-w", "-D", *rule)
            removed.append("iptables FORWARD rule")
        self.record_path.unlink(missing_ok=True)
        return removed

    def _remove_host(self, name: str) -> list[str]:
        removed = []
        namespace, home = self.namespace(name), self.host_dir(name)
        host = self._host_record(name) or {}
        if _is_our_sshd(host.get("sshd_pid"), home / "sshd_config"):
            _end_processes([host["sshd_pid"]])
            removed.append(f"sshd of {name}")
        if namespace in _namespaces():
            # Whatever runs inside one of our namespaces was started there by us (nodes, checkers).
            pids = [int(p) for p in _run("ip", "netns", "pids", namespace).stdout.split()]
            if pids:
                _end_processes(pids)
                removed.append(f"{len(pids)} process(es) in {namespace}")
            _run("ip", "netns", "del", namespace)
            removed.append(f"namespace {namespace}")
        if _run("ip", "link", "show", self.outer_link(name), check=False).returncode == 0:
            # Deleting the namespace deletes its end of the veth pair, and with it this end, a moment
            # later: a link that vanished meanwhile is gone as asked.
            deleted = _run("ip", "link", "del", self.outer_link(name), check=False)
            if deleted.returncode != 0 and "Cannot find device" not in deleted.stderr:
                raise TestbedError(f"ip link del {self.outer_link(name)} failed: {deleted.stderr.strip()}")
            removed.append(f"link {self.outer_link(name)}")
        self.record["hosts"] = [h for h in self.record["hosts"] if h["name"] != name]
        if self.record_path.exists():
            self._save()
        return removed


def _require_root() -> None:
    if os.geteuid() != 0:
        raise TestbedError("the testbed needs root (network namespaces, veth links, sshd on port 22): "
                           "run dynactl testbed as root")


def _namespaces() -> set[str]:
    return {line.split()[0] for line in _run("ip", "netns", "list").stdout.splitlines() if line.strip()}


def _is_our_sshd(pid: int | None, config: Path) -> bool:
    if not pid:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    # sshd rewrites its title ("sshd: /usr/sbin/sshd -f CONFIG [listener] ...") into one string.
    return b"sshd" in cmdline and str(config).encode() in cmdline


def _end_processes(pids: list[int], grace: float = 5.0) -> None:
    for pid in pids:
        _signal(pid, signal.SIGCONT)
        _signal(pid, signal.SIGTERM)
    wait_until(lambda: not any(process.alive(pid) for pid in pids), grace, interval=0.05)
    for pid in pids:
        _signal(pid, signal.SIGKILL)


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def _read_pid(pidfile: Path) -> int | None:
    try:
        return int(pidfile.read_text().strip())
    except (OSError, ValueError):  # not written yet, or half written
        return None


def _connect_error(address: str, port: int) -> OSError | None:
    try:
        with socket.create_connection((address, port), timeout=1):
            return None
    except OSError as exc:
        return exc


def _wait_for_port(address: str, port: int, deadline_seconds: float) -> None:
    error = wait_until(lambda: _connect_error(address, port), deadline_seconds, interval=0.05,
                       done=lambda answer: answer is None)
    if error is not None:
        raise TestbedError(f"{address}:{port} does not answer: {error}") from error
