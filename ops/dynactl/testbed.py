"""Test hosts on one machine, each with its own address and sshd, in one of two kinds.

``up`` makes N hosts ``h1..hN``. Each has a network namespace with loopback up and a veth pair whose
outer end is on a bridge in the root namespace (the bridge holds ``.254`` so this machine reaches
every host); SSH keys (host keys, an authorized key, the client key) are generated into DIR.

* ``netns`` (the default, the fastest): the host is the namespace with its own sshd; it shares this
  machine's file system, so each host gets its own directories for the node's home, data, logs and
  faketime file under DIR (which the hosts' service user must be able to traverse).
* ``machine``: the host is a Debian machine booted in the namespace by systemd-nspawn, systemd as
  PID 1 (``dynactl.machine``), on an overlay of one root file system (``dynactl.rootfs``): its own
  files, sshd, journal and units, so the role's systemd paths run as on bare metal; the node's
  paths are the role's defaults.

It writes ``DIR/inventory.ini`` (Ansible) and
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
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dynactl import machine, process, rootfs
from dynamod.polling import wait_until

DEFAULT_DIR = ".dynamo/testbed"
MAX_HOSTS = 200
SSH_DEADLINE_SECONDS = 15.0
MACHINE_BOOT_DEADLINE_SECONDS = 60.0  # three boot in ~1.2 s; a loaded box takes longer
MACHINE_STOP_DEADLINE_SECONDS = 30.0
KINDS = ("netns", "machine")
#: Where a machine keeps the node and who runs it (the role's defaults: the machine is a host of its own).
#: Where netns hosts' nodes live when the service user cannot reach DIR (``Testbed.node_dir``).
NODE_ROOT_FALLBACK = Path("/var/tmp")
MACHINE_PATHS = {"home": "/opt/dynamod", "data_dir": "/var/lib/dynamod", "log_dir": "/var/log/dynamod",
                 "faketime_file": "/opt/dynamod/faketime/clock", "service_user": "dynamod"}
PYTHON_ON_HOSTS = "/usr/bin/python3"  # not the PATH python3: a pyenv shim that fails over SSH
REQUIRED_TOOLS = {"ip": "iproute2", "sshd": "openssh-server", "ssh-keygen": "openssh-client",
                  "iptables": "iptables"}
MACHINE_TOOLS = {"systemd-nspawn": "systemd-container", "mmdebstrap": "mmdebstrap"}


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
        package = {**REQUIRED_TOOLS, **MACHINE_TOOLS}[name]
        raise TestbedError(f"{name} is missing: apt-get install {package} (scripts/bootstrap does it as root)")
    return path


class Testbed:
    """The testbed recorded in ``directory/testbed.json``."""

    __test__ = False

    def __init__(self, directory: str = DEFAULT_DIR, rootfs_cache: str = rootfs.DEFAULT_CACHE):
        self.directory = Path(directory).resolve()
        self.rootfs_cache = rootfs_cache
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

    def cgroup(self, name: str) -> str:
        return f"{self.prefix}-{name}"

    @property
    def kind(self) -> str:
        return self.record.get("kind", "netns")

    def outer_link(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def host_dir(self, name: str) -> Path:
        """The testbed's own files for host ``name`` (keys, sshd config, a machine's layers)."""
        return self.directory / "hosts" / name

    def node_dir(self, name: str) -> Path:
        """Where a netns host's node lives (home, data, logs, faketime): under DIR when the service
        user can reach it there, else under ``/var/tmp`` (``_choose_node_root``)."""
        return Path(self.record.get("node_root") or self.directory / "hosts") / name

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

    def up(self, count: int, kind: str | None = None,
           progress: Callable[[str], None] = lambda message: None) -> list[dict[str, Any]]:
        """Make (or repair) exactly ``count`` hosts of ``kind`` (default: the testbed's, else
        netns); returns the hosts as nodes.json lists them."""
        _require_root()
        if not 1 <= count <= MAX_HOSTS:
            raise TestbedError(f"--hosts must be between 1 and {MAX_HOSTS}")
        self.load()
        kind = kind or self.kind
        if kind not in KINDS:
            raise TestbedError(f"--kind must be one of {', '.join(KINDS)}")
        if self.record["hosts"] and kind != self.kind:
            raise TestbedError(f"the testbed in {self.directory} has {self.kind} hosts: take it down first "
                               f"(dynactl testbed down --dir {self.directory}) to make {kind} hosts")
        for tool in [*REQUIRED_TOOLS, *(MACHINE_TOOLS if kind == "machine" else ())]:
            _tool(tool)
        if kind == "netns":
            self._choose_node_root()
        image = self._image(progress) if kind == "machine" else None
        self.record["kind"] = kind
        self.record.setdefault("subnet", self._free_subnet())
        self._save()
        self._ensure_keys()
        self._ensure_bridge()
        names = [f"h{i}" for i in range(1, count + 1)]
        for extra in [h["name"] for h in self.record["hosts"] if h["name"] not in names]:
            self._remove_host(extra)
        for index, name in enumerate(names, start=1):
            self._ensure_host(name, index, image)
        self._write_known_hosts()
        hosts = self.hosts()
        self._write_inventory(hosts)
        (self.directory / "nodes.json").write_text(json.dumps({"hosts": hosts}, indent=2) + "\n")
        for host in hosts:
            self._wait_for_sshd(host)
        return hosts

    def _image(self, progress: Callable[[str], None]) -> Path:
        try:
            return rootfs.ensure_image(self.rootfs_cache, progress)
        except (rootfs.RootfsError, OSError) as exc:
            raise TestbedError(f"the machines' root file system: {exc}") from exc

    def _choose_node_root(self) -> None:
        """A netns host's node runs as the service user from its directories, so each one above
        them must let others through. A DIR below one that does not (a checkout under /root, mode
        0700) keeps its keys and sshd files, and the nodes get ``/var/tmp/dynactl-<prefix>``
        instead (recorded; ``down`` removes it). DIR and the nodes' directories are made 0755."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self.directory.chmod(self.directory.stat().st_mode | 0o055)
        if "node_root" in self.record:
            return
        blocked = [a for a in self.directory.parents if a.exists() and not a.stat().st_mode & 0o001]
        self.record["node_root"] = str(NODE_ROOT_FALLBACK / f"dynactl-{self.prefix}") if blocked else None
        self._save()

    def _wait_for_sshd(self, host: dict[str, Any]) -> None:
        deadline = MACHINE_BOOT_DEADLINE_SECONDS if self.kind == "machine" else SSH_DEADLINE_SECONDS
        try:
            _wait_for_port(host["address"], 22, deadline)
        except TestbedError as exc:
            log = self.host_dir(host["name"]) / "machine.log"
            said = log.read_text(errors="replace").strip()[-400:] if log.exists() else ""
            raise TestbedError(f"{host['name']}: {exc}" + (f"; {log} says: {said}" if said else "")) from exc

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

    def _ensure_host(self, name: str, index: int, image: Path | None) -> None:
        namespace, outer = self.namespace(name), self.outer_link(name)
        host = self._host_record(name)
        if host is None:
            host = {"name": name, "namespace": namespace, "link": outer, "address": self.address(index),
                    "sshd_pid": None}
            if image is not None:
                host.update(image=str(image), cgroup=self.cgroup(name), supervisor_pid=None)
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
        home.mkdir(parents=True, exist_ok=True)
        host_key = home / "ssh_host_ed25519_key"
        if not host_key.exists():
            _run(_tool("ssh-keygen"), "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(host_key))
        if image is not None:
            self._ensure_machine(host, home)
            return
        node = self.node_dir(name)
        for directory in (node.parent, node, *(node / sub for sub in ("opt", "data", "logs", "faketime"))):
            directory.mkdir(parents=True, exist_ok=True)
            directory.chmod(0o755)
        self._ensure_sshd(host, home)

    def _ensure_machine(self, host: dict[str, Any], home: Path) -> None:
        config = home / "machine.json"
        if _is_ours(host.get("supervisor_pid"), b"dynactl.machine", config):
            return
        layers = home / "machine"
        root = layers / "root"
        # The image the machine was made from, even when a newer one exists: its upper layer holds
        # changes against that one.
        machine.mount_overlay(Path(host["image"]), layers / "upper", layers / "work", root)
        machine.prepare_root(root, host["name"], (self.directory / "authorized_keys").read_text(),
                             home / "ssh_host_ed25519_key")
        config.write_text(json.dumps({"root": str(root), "machine": self.namespace(host["name"]),
                                      "netns": host["namespace"], "cgroup": host["cgroup"]}) + "\n")
        with open(home / "machine.log", "ab") as log:
            supervisor = subprocess.Popen([sys.executable, "-m", "dynactl.machine", str(config)],
                                          stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd="/",
                                          start_new_session=True)
        host["supervisor_pid"] = supervisor.pid
        self._save()

    def _ensure_sshd(self, host: dict[str, Any], home: Path) -> None:
        config = home / "sshd_config"
        if _is_ours(host.get("sshd_pid"), b"sshd", config):
            return
        host_key = home / "ssh_host_ed25519_key"
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
            home = self.node_dir(host["name"])
            # A namespace shares this machine's /etc and /run: never a systemd unit for it, even
            # where this machine runs systemd (it would be this machine's unit).
            paths = MACHINE_PATHS if self.kind == "machine" else {
                "home": str(home / "opt"), "data_dir": str(home / "data"), "log_dir": str(home / "logs"),
                "faketime_file": str(home / "faketime" / "clock"), "service_manager": "dynactl"}
            result.append({
                "name": host["name"], "address": host["address"], "ssh_user": "root", "ssh_key": str(self.key_path),
                "ssh_port": 22, "known_hosts": str(self.known_hosts), "namespace": host["namespace"],
                "kind": self.kind, "python": PYTHON_ON_HOSTS, **paths})
        return result

    def _write_inventory(self, hosts: list[dict[str, Any]]) -> None:
        lines = ["# Written by `dynactl testbed up`: the test hosts of this machine.", "[dynamod]"]
        for host in hosts:
            line = (f"{host['name']} ansible_host={host['address']} dynamod_home={host['home']} "
                    f"dynamod_data_dir={host['data_dir']} dynamod_log_dir={host['log_dir']}")
            if host.get("service_manager"):
                line += f" dynamod_service_manager={host['service_manager']}"
            lines.append(line)
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
        # Found by name, not by the record: a crash may have lost the record, not the directory.
        outside = NODE_ROOT_FALLBACK / f"dynactl-{self.prefix}"
        if outside.is_dir():
            shutil.rmtree(outside)
            removed.append(f"node directories {outside}")
        self.record_path.unlink(missing_ok=True)
        return removed

    def _remove_host(self, name: str) -> list[str]:
        removed = []
        namespace, home = self.namespace(name), self.host_dir(name)
        host = self._host_record(name) or {}
        if _is_ours(host.get("sshd_pid"), b"sshd", home / "sshd_config"):
            _end_processes([host["sshd_pid"]])
            removed.append(f"sshd of {name}")
        supervisor = host.get("supervisor_pid")
        if _is_ours(supervisor, b"dynactl.machine", home / "machine.json"):
            # SIGTERM: the supervisor shuts the machine down (its units stop, the node cleanly).
            _signal(supervisor, signal.SIGTERM)
            if not wait_until(lambda: not process.alive(supervisor), MACHINE_STOP_DEADLINE_SECONDS, interval=0.1):
                _signal(supervisor, signal.SIGKILL)
            removed.append(f"machine {name}")
        if namespace in _namespaces():
            # Whatever runs inside one of our namespaces was started there by us (nodes, checkers).
            pids = [int(p) for p in _run("ip", "netns", "pids", namespace).stdout.split()]
            if pids:
                _end_processes(pids)
                removed.append(f"{len(pids)} process(es) in {namespace}")
            _run("ip", "netns", "del", namespace)
            removed.append(f"namespace {namespace}")
        if machine.unmount(home / "machine" / "root"):
            removed.append(f"overlay of {name}")
        try:
            removed += [f"cgroup {path}" for path in machine.remove_cgroups(self.cgroup(name))]
        except OSError as exc:
            raise TestbedError(f"cgroups of {name}: {exc} (processes still in it?)") from exc
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


def _is_ours(pid: int | None, program: bytes, config: Path) -> bool:
    """True when ``pid`` runs ``program`` with our ``config`` (not a reused PID)."""
    if not process.alive(pid):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    # sshd rewrites its title ("sshd: /usr/sbin/sshd -f CONFIG [listener] ...") into one string.
    return program in cmdline and str(config).encode() in cmdline


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
