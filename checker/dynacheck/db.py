"""The database under test: install, start fresh, control and tear down dynamod on the nodes.

Nodes are hosts reached through ``dynactl.remote`` (SSH with Fabric for the testbed and real
hosts, subprocesses for ``--local``), laid out as the Ansible role lays them out and driven with
``dynactl service`` on each host, so a checker run exercises exactly what operators deploy. A
``--local`` cluster is the same thing on 127.0.0.1: each node's home links ``venv`` to the
checker's own environment and ports are picked free.

A run's hosts are its members and its spares (``--spares``, for the ``membership`` nemesis): a spare
is installed but not started, with itself as its only member in node.toml (``dynactl local add``
and ansible ``join.yml`` do the same), so that once started it is alone and can join. The member
list changes during the run (``admit``, ``depart``, ``retire``); everything that acts on "the
nodes" (faults, heal, polls, final reads) acts on the current members.

A secured run (``--tls``) reaches the nodes with the credentials its hosts carry
(``dynactl.credentials``): for ``--local`` and ``--testbed``, whose hosts share this machine's file
system, a CA and certificates are made here (``secure_hosts``); a nodes file names them itself.
"""

from __future__ import annotations

import contextlib
import random
import shlex
import shutil
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs

from dynactl.certs import CertsError
from dynactl.credentials import host_credentials, make_authority, node_tls_settings, with_credentials
from dynactl.deploy import install, render_node_toml, service_command, wait_deployed
from dynactl.inventory import Host
from dynactl.local import port_is_free
from dynactl.remote import HostResult, Hosts, LocalHosts
from dynamod.client import ClientError, Credentials, DynamoClient, NodeUnavailable

#: Node settings for checker runs: faults are noticed and repaired in seconds, not minutes. An
#: exchange every 0.1 s lets anti-entropy sweep a 3-node, 16-partition cluster's 32 replica pairs
#: in ~3 s, so a lost disk is known refilled soon enough for the next one.
TEST_NODE_CONFIG = {"request_timeout": 1.0, "handoff_interval": 0.5, "anti_entropy_interval": 0.1,
                    "heartbeat_interval": 0.5, "gossip_interval": 0.5, "transfer_interval": 0.5}

#: The checker's client certificate in a CA it makes (admin: the membership nemesis joins and removes
#: nodes, the replica monitor reads /admin/replica).
CHECKER_CLIENT = "dynacheck"


class DbError(Exception):
    """The cluster could not be set up or controlled; the message says where and why."""


@attrs.define
class Cluster:
    """The nodes of one test and how to act on them: ``hosts`` are the current members, ``spares``
    hosts installed but not members (stopped, data dir empty), ``departing`` former members whose
    departure is not finished (neither: not acted on as members, not yet reusable)."""

    hosts: list[Host]
    control: Hosts
    local_dir: Path | None = None  # the scratch directory of a --local cluster, removed at teardown
    faketime: bool = False
    spares: list[Host] = attrs.Factory(list)
    departing: list[Host] = attrs.Factory(list)
    #: Counts membership changes, so a thread holding per-node clients knows to rebuild them.
    membership_version: int = 0
    _lock: threading.Lock = attrs.field(factory=threading.Lock, repr=False)

    @property
    def ids(self) -> list[str]:
        return [host.name for host in self.hosts]

    @property
    def spare_ids(self) -> list[str]:
        return [host.name for host in self.spares]

    @property
    def roster(self) -> list[Host]:
        """Every host of the run: members, departing and spares."""
        return self.hosts + self.departing + self.spares

    def host(self, node: str) -> Host:
        return next(host for host in self.roster if host.name == node)

    # -- membership (the lists are replaced, never changed in place: other threads read them) -------

    def admit(self, node: str, position: int | None = None) -> None:
        """``node`` (a spare) has joined: it is a member, at ``position`` (where the node it replaced
        was) or last."""
        with self._lock:
            host = self.host(node)
            members = [h for h in self.hosts if h.name != node]
            members.insert(len(members) if position is None else min(position, len(members)), host)
            self.hosts = members
            self.spares = [h for h in self.spares if h.name != node]
            self.departing = [h for h in self.departing if h.name != node]
            self.membership_version += 1

    def depart(self, node: str) -> int:
        """``node`` stops being a member (it leaves, or is about to be killed and replaced); returns
        its position among the members, for ``restore``."""
        with self._lock:
            position = self.ids.index(node)
            host = self.hosts[position]
            self.hosts = [h for h in self.hosts if h.name != node]
            self.departing = [*self.departing, host]
            self.membership_version += 1
            return position

    def restore(self, node: str, position: int) -> None:
        """A departure that did not happen: ``node`` is a member again, where it was."""
        with self._lock:
            host = self.host(node)
            self.departing = [h for h in self.departing if h.name != node]
            members = [h for h in self.hosts if h.name != node]
            members.insert(min(position, len(members)), host)
            self.hosts = members
            self.membership_version += 1

    def retire(self, node: str) -> None:
        """``node`` is stopped with an empty data dir: a spare again."""
        with self._lock:
            host = self.host(node)
            self.hosts = [h for h in self.hosts if h.name != node]
            self.departing = [h for h in self.departing if h.name != node]
            self.spares = [*[h for h in self.spares if h.name != node], host]
            self.membership_version += 1

    def addresses(self) -> dict[str, str]:
        """node id -> HOST:PORT of its HTTP API."""
        return {host.name: host.http for host in self.hosts}

    @property
    def credentials(self) -> Credentials | None:
        """How the checker reaches the nodes: the credentials the hosts carry (None: plain HTTP)."""
        return host_credentials(self.roster[0]) if self.roster else None

    @contextlib.contextmanager
    def clients(self, timeout: float) -> Iterator[dict[str, DynamoClient]]:
        """An HTTP client per node (node id -> client), closed on leaving the block."""
        clients = {node: DynamoClient(address, timeout=timeout, credentials=self.credentials)
                   for node, address in self.addresses().items()}
        try:
            yield clients
        finally:
            for client in clients.values():
                client.close()

    def statuses(self, timeout: float, nodes: list[str] | None = None) -> dict[str, dict[str, Any] | str]:
        """Each of ``nodes``' (default every member's) ``/admin/status``, or why it did not answer."""
        answers: dict[str, dict[str, Any] | str] = {}
        with self.clients(timeout) as clients:
            for node in self.ids if nodes is None else nodes:
                if node not in clients:
                    answers[node] = f"{node} is not a member"
                    continue
                try:
                    answers[node] = clients[node].status()
                except (ClientError, NodeUnavailable) as exc:
                    answers[node] = f"{node} did not answer ({exc})"
        return answers

    def faketime_file(self, host: Host) -> str:
        return faketime_file(host)

    def run(self, command: Callable[[Host], str], nodes: list[str] | None = None,
            timeout: float | None = 60.0) -> dict[str, HostResult]:
        """A per-host shell command on ``nodes`` (default all), in parallel."""
        chosen = self.hosts if nodes is None else [self.host(node) for node in nodes]
        return self.control.each(
            lambda connection, host: connection.run(command(host), hide=True, warn=True, in_stream=False,
                                                    timeout=timeout), chosen)

    def service(self, action: str, nodes: list[str] | None = None) -> dict[str, HostResult]:
        """``dynactl service ACTION`` on ``nodes`` (start and restart keep the clock skew hook)."""
        return self.run(lambda host: service_command(host, action, wait=60.0), nodes, timeout=90.0)

    # -- lifecycle --------------------------------------------------------------------------------

    def setup(self, wheelhouse: dict[str, Any] | None, progress: Callable[[str], None],
              before_start: Callable[[], None] = lambda: None) -> None:
        """Stop what runs, wipe data and logs, install, write node.toml, run ``before_start``, start
        every member (spares stay stopped), and wait until each sees all members up."""
        progress("stopping old nodes and wiping their data")
        everyone = [host.name for host in self.roster]
        self.service("stop", everyone)  # stop, not kill: a systemd unit would restart a killed node
        wiped = self.run(wipe_command, everyone)
        self.require(wiped, "wiping data")
        if self.faketime:
            self.require(self.set_clock_offsets({node: 0.0 for node in everyone}), "resetting the clock files")
        progress("installing" if wheelhouse else "writing node configs")
        if wheelhouse is not None:
            installed = self.control.each(lambda connection, host: install(connection, host, wheelhouse,
                                                                           self.members_of(host)), self.roster)
        else:
            installed = self.control.each(lambda connection, host: self._write_local_config(host), self.roster)
        self.require(installed, "installing")
        before_start()
        progress("starting dynamod")
        self.require(self.service("start"), "starting dynamod")
        progress("waiting until every node sees every member up")
        problems = wait_deployed(self.hosts, self.hosts, deadline_seconds=90.0)
        if problems:
            raise DbError("cluster not healthy: " + "; ".join(problems.values()))

    def _write_local_config(self, host: Host) -> str:
        home = Path(host.home)
        home.mkdir(parents=True, exist_ok=True)
        venv = home / "venv"
        if not venv.exists():
            venv.symlink_to(Path(sys.prefix).resolve())
        Path(host.config_path).write_text(render_node_toml(host, self.members_of(host)))
        return "wrote node.toml"

    def members_of(self, host: Host) -> list[Host]:
        """The members ``host``'s node.toml lists: the founding members, or only itself (a spare)."""
        return self.hosts if host in self.hosts else [host]

    def make_spare(self, node: str) -> dict[str, HostResult]:
        """Make ``node``'s host ready to start alone and join: stopped, data dir emptied (the directory
        stays: it may be a mount point), node.toml listing only itself, clock file reset."""
        host = self.host(node)
        data = shlex.quote(str(host.var("dynamod_data_dir")))
        commands = [service_command(host, "stop"), f"mkdir -p {data} && find {data} -mindepth 1 -delete",
                    f"printf %s {shlex.quote(render_node_toml(host, [host]))} > {shlex.quote(host.config_path)}"]
        if self.faketime:
            commands.append(f"mkdir -p {shlex.quote(str(Path(self.faketime_file(host)).parent))} && "
                            f"printf '+0\\n' > {shlex.quote(self.faketime_file(host))}")
        return self.run(lambda _: " && ".join(commands), [node], timeout=90.0)

    def set_clock_offsets(self, offsets: dict[str, float]) -> dict[str, HostResult]:
        """Write each node's libfaketime file: its wall clock runs ``offset`` seconds off."""
        return self.run(lambda host: f"printf '%+.3f\\n' {offsets[host.name]:.3f} > "
                                     f"{shlex.quote(self.faketime_file(host))}", list(offsets))

    def collect_logs(self, destination: Path) -> dict[str, HostResult]:
        """Copy each node's dynamod.log and stderr.log to ``destination/<id>/``."""
        def fetch(connection: Any, host: Host) -> str:
            target = destination / host.name
            target.mkdir(parents=True, exist_ok=True)
            fetched = []
            for name in ("dynamod.log", "stderr.log"):
                remote = f"{host.var('dynamod_log_dir')}/{name}"
                if connection.run(f"test -f {shlex.quote(remote)}", hide=True, warn=True, in_stream=False).ok:
                    connection.get(remote, str(target / name))
                    fetched.append(name)
            return ", ".join(fetched) or "no logs"
        return self.control.each(fetch, self.roster)

    def teardown(self) -> dict[str, HostResult]:
        """Stop every node, spares too (data stays on the hosts for a look)."""
        return self.service("stop", [host.name for host in self.roster])

    def remove_scratch(self) -> None:
        """Remove a --local cluster's directory (after anything mounted in it was released)."""
        if self.local_dir is not None:
            shutil.rmtree(self.local_dir, ignore_errors=True)

    @staticmethod
    def require(results: dict[str, HostResult], step: str) -> None:
        failed = [result.line() for result in results.values() if not result.ok]
        if failed:
            raise DbError(f"{step} failed: " + "; ".join(failed))


def wipe_command(host: Host) -> str:
    """Empty the node's data and log directories, recreated with the ownership the role gives them
    (the service user's, 0750), so that the node, running as that user, can write them and Ansible
    finds them as it left them."""
    data, logs = shlex.quote(str(host.var("dynamod_data_dir"))), shlex.quote(str(host.var("dynamod_log_dir")))
    command = f"rm -rf {data} {logs} && mkdir -p {data} {logs} {shlex.quote(str(Path(faketime_file(host)).parent))}"
    user = host.var("dynamod_user")
    if user:
        owner = shlex.quote(f"{user}:{host.var('dynamod_group') or user}")
        command += f" && chown {owner} {data} {logs} && chmod 0750 {data} {logs}"
    return command


def faketime_file(host: Host) -> str:
    """Where ``host``'s node reads its clock offset (the clock nemesis writes it)."""
    return str(host.var("dynamod_faketime_file") or f"{host.home}/faketime")


def with_test_settings(host: Host, settings: dict[str, Any], faketime: bool,
                       node_config: dict[str, Any] | None = None) -> Host:
    """``host`` with the node settings of this test (mode, quorums, fast repair intervals, and
    ``node_config``: node.toml settings the run chose)."""
    variables = {**host.vars, **{f"dynamod_{key}": value for key, value in settings.items()},
                 "dynamod_extra_config": {**(host.var("dynamod_extra_config") or {}), **TEST_NODE_CONFIG,
                                          **(node_config or {})}}
    if faketime:
        variables["dynamod_faketime_file"] = host.var("dynamod_faketime_file") or f"{host.home}/faketime"
    else:
        variables.pop("dynamod_faketime_file", None)
    return attrs.evolve(host, vars=variables)


def local_hosts(count: int, directory: Path) -> list[Host]:
    """``count`` nodes on 127.0.0.1 under ``directory``, with free HTTP and peer ports."""
    hosts = []
    port = random.SystemRandom().randrange(18000, 27000)  # concurrent runs rarely probe the same ports
    for index in range(1, count + 1):
        while not (port_is_free(port) and port_is_free(port + 1000)):
            port += 1
        home = directory / f"n{index}"
        hosts.append(Host(name=f"n{index}", address="127.0.0.1", vars={
            "dynamod_home": str(home), "dynamod_data_dir": str(home / "data"), "dynamod_log_dir": str(home / "logs"),
            "dynamod_http_port": port, "dynamod_peer_port": port + 1000,
            "dynamod_faketime_file": str(home / "faketime" / "clock")}))
        port += 1
    return hosts


def secure_hosts(hosts: list[Host], directory: Path) -> list[Host]:
    """``hosts`` secured with a CA and certificates made in ``directory`` (for nodes that read them
    from this machine's file system): each node's config names its own certificate (for the host
    it is reached at), its key and the CA, and each host carries the checker's admin credentials."""
    directory = directory.resolve()  # the nodes' configs name these files: from any directory
    try:
        credentials = make_authority(directory, "dynacheck", CHECKER_CLIENT)
        secured = []
        for host in hosts:
            tls = node_tls_settings(directory, host.name, [host.http, host.peer])
            config = {**(host.var("dynamod_extra_config") or {}), **tls}
            secured.append(with_credentials(attrs.evolve(host, vars={**host.vars, "dynamod_extra_config": config}),
                                            credentials))
    except CertsError as exc:
        raise DbError(f"making the certificates in {directory}: {exc}") from None
    return secured


def local_cluster(count: int, settings: dict[str, Any], faketime: bool, spares: int = 0,
                  node_config: dict[str, Any] | None = None, tls: bool = False) -> Cluster:
    """A --local cluster of ``count`` members and ``spares`` spare nodes in a fresh scratch directory
    (secured with ``tls``: its certificates in the directory's ``certs``)."""
    directory = Path(tempfile.mkdtemp(prefix="dynacheck-local-"))
    hosts = [with_test_settings(host, settings, faketime, node_config)
             for host in local_hosts(count + spares, directory)]
    if tls:
        hosts = secure_hosts(hosts, directory / "certs")
    return Cluster(hosts=hosts[:count], spares=hosts[count:], control=LocalHosts(hosts), local_dir=directory,
                   faketime=faketime)
