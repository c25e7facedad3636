"""Local clusters: N dynamod processes on 127.0.0.1 described by ``DIR/cluster.json`` (CONTRACT).

Each node gets ``DIR/<id>/node.toml``, ``DIR/<id>/data`` and ``DIR/<id>/dynamod.log``. Processes are
started in their own session so they outlive the dynactl that started them, and only processes
whose command line names this cluster's config are ever signalled.

A secured cluster (``create(..., tls=True)``) has a certs directory ``DIR/certs`` (``dynactl certs``
layout): a CA, a certificate per node for 127.0.0.1, and the admin client certificate ``dynactl``
that cluster.json's ``"tls"`` object names, so that every dynactl command reaches its nodes.
"""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path
from typing import Any

import attrs

from dynactl import process
from dynactl.certs import CertsError
from dynactl.credentials import make_authority, node_tls_settings
from dynamod.client import ClientError, Credentials, CredentialsError, DynamoClient, NodeUnavailable
from dynamod.polling import wait_until

DEFAULT_DIR = ".dynamo/local"
START_DEADLINE_SECONDS = 30.0
#: Where a secured local cluster keeps its CA, certificates and keys, under its directory.
CERTS_DIR = "certs"
#: The client certificate dynactl uses against a secured local cluster (admin: it runs everything).
ADMIN_CLIENT = "dynactl"
LOCAL_CA_NAME = "dynamo-local"


class LocalClusterError(Exception):
    """A local cluster operation that cannot proceed; the message says why."""


@attrs.define
class LocalNode:
    """One node of a local cluster, as recorded in cluster.json."""

    id: str
    http: str
    peer: str
    pid: int | None
    data_dir: str
    log: str
    config: str

    def as_json(self) -> dict[str, Any]:
        return attrs.asdict(self)


def node_toml(node: LocalNode, members: list[LocalNode], settings: dict[str, Any]) -> str:
    """The TOML config of one local node."""
    lines = [f'node_id = "{node.id}"', f'http = "{node.http}"', f'peer = "{node.peer}"',
             f'data_dir = "{node.data_dir}"', f'log_file = "{node.log}"']
    for name, value in settings.items():
        if isinstance(value, bool):
            lines.append(f"{name} = {str(value).lower()}")
        elif isinstance(value, str):
            lines.append(f'{name} = "{value}"')
        else:
            lines.append(f"{name} = {value}")
    for member in members:
        lines += ["", "[[members]]", f'id = "{member.id}"', f'peer = "{member.peer}"', f'http = "{member.http}"']
    return "\n".join(lines) + "\n"


def port_is_free(port: int) -> bool:
    """True when nothing listens on 127.0.0.1:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _status_answer(http: str, timeout: float, credentials: Credentials | None) -> dict[str, Any] | ClientError | None:
    """The node's /admin/status document, the refusal it answered, or None when it did not answer."""
    try:
        client = DynamoClient(http, timeout=timeout, credentials=credentials)
    except CredentialsError:
        raise  # unusable credentials are no node's silence
    except ValueError:  # not HOST:PORT: nothing there can answer
        return None
    try:
        return client.status()
    except ClientError as refusal:
        return refusal
    except NodeUnavailable:
        return None
    finally:
        client.close()


def fetch_status(http: str, timeout: float = 1.0, credentials: Credentials | None = None) -> dict[str, Any] | None:
    """The node's /admin/status document, or None when it does not answer it (or refuses the
    ``credentials``: a secured node needs an admin's)."""
    answer = _status_answer(http, timeout, credentials)
    return answer if isinstance(answer, dict) else None


def answers_status(http: str, timeout: float = 1.0, credentials: Credentials | None = None) -> bool:
    """True when the node serves its HTTP API: it answers GET /admin/status, with the document or,
    under TLS, with a 401 or 403 to a caller without admin credentials (a refusal is an answer)."""
    answer = _status_answer(http, timeout, credentials)
    return isinstance(answer, dict) or (isinstance(answer, ClientError) and answer.status in (401, 403))


class LocalCluster:
    """The cluster recorded in ``directory/cluster.json``."""

    def __init__(self, directory: str = DEFAULT_DIR):
        self.directory = Path(directory).resolve()
        self.path = self.directory / "cluster.json"
        self.nodes: list[LocalNode] = []
        self.settings: dict[str, Any] = {}
        #: dynactl's credentials for a secured cluster (cluster.json's "tls"), None when plain.
        self.tls: Credentials | None = None

    # -- persistence ---------------------------------------------------------------------------

    def load(self) -> LocalCluster:
        """Read cluster.json; raises LocalClusterError when there is none."""
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError as exc:
            raise LocalClusterError(f"no local cluster in {self.directory} (run: dynactl local up)") from exc
        except ValueError as exc:
            raise LocalClusterError(f"{self.path} is not valid JSON: {exc}") from exc
        self.nodes = [LocalNode(**node) for node in data["nodes"]]
        self.settings = {k: v for k, v in data.items() if k not in ("nodes", "tls")}
        try:
            self.tls = Credentials.from_json(data["tls"], f"{self.path}: tls") if "tls" in data else None
        except CredentialsError as exc:
            raise LocalClusterError(str(exc)) from None
        return self

    def credentials(self) -> Credentials | None:
        """How to reach this cluster's nodes: its admin client certificate and CA (None: plain HTTP)."""
        return self.tls

    def client(self, node: LocalNode, timeout: float = 10.0) -> DynamoClient:
        """A client of ``node``'s HTTP API, with this cluster's credentials."""
        return DynamoClient(node.http, timeout=timeout, credentials=self.tls)

    def save(self) -> None:
        """Write cluster.json atomically."""
        self.directory.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_suffix(".json.tmp")
        temporary.write_text(json.dumps(self.contract_document(), indent=2) + "\n")
        temporary.replace(self.path)

    def node(self, node_id: str) -> LocalNode:
        """The node called ``node_id``."""
        for node in self.nodes:
            if node.id == node_id:
                return node
        known = ", ".join(n.id for n in self.nodes)
        raise LocalClusterError(f"no node {node_id!r} in {self.path} (nodes: {known})")

    def running(self, node: LocalNode) -> bool:
        """True when the node's recorded process is alive."""
        return process.is_dynamod(node.pid, node.config)

    # -- lifecycle -----------------------------------------------------------------------------

    def create(self, count: int, *, base_port: int, settings: dict[str, Any], tls: bool = False) -> None:
        """Lay out ``count`` nodes (configs, dirs) without starting them; with ``tls``, secured:
        mutual TLS between them, HTTPS with authentication (see the module's doc)."""
        if self.path.exists():
            self.load()
            alive = [n.id for n in self.nodes if self.running(n)]
            if alive:
                raise LocalClusterError(f"a local cluster is already running in {self.directory} "
                                        f"(nodes {', '.join(alive)}); run: dynactl local down")
        if count < 1:
            raise LocalClusterError("--nodes must be at least 1")
        http_ports = [base_port + i for i in range(1, count + 1)]
        peer_ports = [base_port - 1000 + i for i in range(1, count + 1)]
        busy = [p for p in http_ports + peer_ports if not port_is_free(p)]
        if busy:
            raise LocalClusterError(f"ports already in use: {', '.join(map(str, busy))} "
                                    f"(choose another --base-port)")
        self.settings = dict(settings)
        self.nodes = []
        for index in range(1, count + 1):
            node_dir = self.directory / f"n{index}"
            self.nodes.append(LocalNode(
                id=f"n{index}", http=f"127.0.0.1:{http_ports[index - 1]}",
                peer=f"127.0.0.1:{peer_ports[index - 1]}", pid=None,
                data_dir=str(node_dir / "data"), log=str(node_dir / "dynamod.log"),
                config=str(node_dir / "node.toml")))
        self.tls = self._make_authority() if tls else None
        for node in self.nodes:
            Path(node.config).parent.mkdir(parents=True, exist_ok=True)
            Path(node.config).write_text(node_toml(node, self.nodes, self._node_settings(node)))
        self.save()

    # -- certificates (secured clusters) ---------------------------------------------------------

    @property
    def certs_dir(self) -> Path:
        return self.directory / CERTS_DIR

    def _make_authority(self) -> Credentials:
        """The cluster's CA and dynactl's admin client certificate (credentials.make_authority)."""
        try:
            return make_authority(self.certs_dir, LOCAL_CA_NAME, ADMIN_CLIENT)
        except CertsError as exc:
            raise LocalClusterError(f"cannot make the certificates in {self.certs_dir}: {exc}") from None

    def _node_settings(self, node: LocalNode) -> dict[str, Any]:
        """The settings of ``node``'s config: the cluster's, and when secured its own certificate
        (issued now, for the host it is reached at) with its key and the CA."""
        if self.tls is None:
            return self.settings
        try:
            return {**self.settings, **node_tls_settings(self.certs_dir, node.id, [node.http, node.peer])}
        except CertsError as exc:
            raise LocalClusterError(f"cannot issue the certificate of {node.id}: {exc}") from None

    def add_node(self) -> LocalNode:
        """Lay out one more node on the next free ports, configured alone (it joins afterwards)."""
        index = 1 + max(int(n.id[1:]) for n in self.nodes if n.id[1:].isdigit())
        http_port = 1 + max(int(n.http.rpartition(":")[2]) for n in self.nodes)
        peer_port = 1 + max(int(n.peer.rpartition(":")[2]) for n in self.nodes)
        while not (port_is_free(http_port) and port_is_free(peer_port)):
            http_port, peer_port = http_port + 1, peer_port + 1
        node_dir = self.directory / f"n{index}"
        node = LocalNode(id=f"n{index}", http=f"127.0.0.1:{http_port}", peer=f"127.0.0.1:{peer_port}", pid=None,
                         data_dir=str(node_dir / "data"), log=str(node_dir / "dynamod.log"),
                         config=str(node_dir / "node.toml"))
        node_dir.mkdir(parents=True, exist_ok=True)
        Path(node.config).write_text(node_toml(node, [node], self._node_settings(node)))
        self.nodes.append(node)
        self.save()
        return node

    def discard(self, node: LocalNode) -> None:
        """Forget a stopped node that never joined (a dry run's or a refused replacement's): it
        leaves cluster.json and its directory is deleted."""
        if self.running(node):
            raise LocalClusterError(f"{node.id} is still running")
        self.nodes = [n for n in self.nodes if n.id != node.id]
        self.save()
        shutil.rmtree(Path(node.config).parent, ignore_errors=True)

    def start(self, node: LocalNode) -> None:
        """Start one node's process (no-op when it already runs)."""
        if self.running(node):
            return
        node_dir = Path(node.config).parent
        child = process.start_detached(process.dynamod_command(node.config), output=node_dir / "stderr.log",
                                       cwd=node_dir)
        node.pid = child.pid
        self.save()
        process.wait_until_exec(child, node.config)

    def wait_until_serving(self, nodes: list[LocalNode], deadline_seconds: float = START_DEADLINE_SECONDS) -> None:
        """Poll until ``nodes`` answer /admin/status and every running node of the cluster sees
        every running member up (peer links connected); raise naming what is not ready."""
        def not_ready() -> list[str]:
            for node in nodes:
                if not self.running(node):
                    raise LocalClusterError(f"node {node.id} exited during start-up; "
                                            f"see {Path(node.config).parent / 'stderr.log'} and {node.log}")
            return self._not_ready(nodes)

        left = wait_until(not_ready, deadline_seconds, interval=0.05, done=lambda problems: not problems)
        if left:
            raise LocalClusterError(f"not ready within {deadline_seconds:.0f}s: {', '.join(left)}")

    def _not_ready(self, nodes: list[LocalNode]) -> list[str]:
        running = {n.id for n in self.nodes if self.running(n)}
        statuses = {n.id: fetch_status(n.http, credentials=self.tls) for n in self.nodes if n.id in running}
        # A view of a node that started just now counts only if it was formed after the start.
        uptimes = {n.id: statuses[n.id]["uptime"] for n in nodes if statuses.get(n.id)}
        problems = [f"{n.id} does not answer" for n in nodes if n.id in running and statuses.get(n.id) is None]
        for observer, status in statuses.items():
            if status is None:
                continue
            stale = []
            for member in status.get("members", []):
                if member["id"] not in running or member["id"] == observer:
                    continue
                heard = member.get("heard_ago")
                fresh = member["id"] not in uptimes or (heard is not None and heard < uptimes[member["id"]])
                if member["status"] != "up" or not fresh:
                    stale.append(member["id"])
            if stale:
                problems.append(f"{observer} does not yet see {', '.join(stale)} up")
        return problems

    def signal(self, node: LocalNode, signum: int) -> bool:
        """Send ``signum`` to the node's process if it is ours and alive."""
        return process.send(node.pid, node.config, signum)

    def stop(self, node: LocalNode, grace: float = process.STOP_GRACE_SECONDS) -> str:
        """SIGTERM, then SIGKILL after ``grace`` seconds; returns how it ended."""
        return self._forget_pid(node, process.stop(node.pid, node.config, grace))

    def kill(self, node: LocalNode) -> str:
        """SIGKILL at once (a crash)."""
        return self._forget_pid(node, process.kill(node.pid, node.config))

    def _forget_pid(self, node: LocalNode, how: str) -> str:
        node.pid = None
        self.save()
        return how

    def contract_document(self) -> dict[str, Any]:
        """cluster.json's content as CONTRACT describes it (and a secured cluster's "tls")."""
        document = {"nodes": [node.as_json() for node in self.nodes], **self.settings}
        if self.tls is not None:
            document["tls"] = self.tls.as_json()
        return document

