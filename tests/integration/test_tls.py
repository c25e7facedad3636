"""A secured local cluster (issue 15) against real dynamod processes: what the ports refuse (plain
HTTP, plain peer connections, a certificate of another CA, a client certificate on the peer port, a
node certificate speaking for another node), who may do what over HTTPS (401, 403, a reader, a
writer token), and that dynactl and dynacheck work against ``local up --tls`` unchanged."""

from __future__ import annotations

import json
import os
import socket
import ssl
import struct
import subprocess
import sys
from pathlib import Path

import msgpack
import pytest

from dynactl import certs
from dynamod.client import ClientError, Credentials, DynamoClient, NodeUnavailable
from dynamod.core.membership import ClusterState, MemberEntry, state_to_wire
from dynamod.polling import wait_until
from dynamod.security.identity import Role
from tests.integration.conftest import free_base_port

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
PARTITIONS = 32  # make_cluster's
#: A TLS alert record (content type 21): what a TLS endpoint may send a plaintext client before closing.
TLS_ALERT = 0x15


def split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


def frame(message: list) -> bytes:
    """A peer-protocol frame: a 4-byte big-endian length, then msgpack."""
    body = msgpack.packb(message, use_bin_type=True)
    return struct.pack("!I", len(body)) + body


def read_until_closed(sock: socket.socket, timeout: float = 5.0) -> bytes:
    """Everything the other side sends until it closes (a timeout fails the test: it kept it open)."""
    sock.settimeout(timeout)
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def read_frame(sock: ssl.SSLSocket, timeout: float = 5.0) -> list:
    sock.settimeout(timeout)
    data = b""
    while len(data) < 4 or len(data) < 4 + struct.unpack("!I", data[:4])[0]:
        chunk = sock.recv(65536)
        assert chunk, f"the node closed the connection; received {data!r}"
        data += chunk
    return msgpack.unpackb(data[4:], raw=False)


def peer_connection(address: str, ca: str, cert: Path, key: Path) -> ssl.SSLSocket:
    """A TLS connection to a node's peer port presenting ``cert``, verifying the node against ``ca``."""
    context = ssl.create_default_context(cafile=ca)
    context.load_cert_chain(cert, key)
    host, port = split(address)
    return context.wrap_socket(socket.create_connection((host, port), timeout=5), server_hostname=host)


@pytest.fixture
def secured(make_cluster):
    return make_cluster(3, tls=True)


def test_a_plaintext_http_request_gets_no_http_answer(secured):
    host, port = split(secured.cluster.node("n1").http)
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(b"GET /admin/status HTTP/1.1\r\nHost: n1\r\n\r\n")
        received = read_until_closed(sock)
    assert not received or received[0] == TLS_ALERT, received[:80]
    with pytest.raises(NodeUnavailable):
        DynamoClient(secured.cluster.node("n1").http, timeout=5).status()


def test_a_plaintext_peer_connection_gets_no_answer_frame(secured):
    host, port = split(secured.cluster.node("n1").peer)
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(frame([0, 1, "ping", None]))
        received = read_until_closed(sock)
    assert not received or received[0] == TLS_ALERT, received[:80]


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3], ids=["tls1.2", "tls1.3"])
def test_a_peer_with_a_certificate_of_another_ca_is_refused_in_the_handshake(secured, tmp_path, version):
    other = tmp_path / "other-ca"
    certs.init_ca(other, "impostors")
    impostor = certs.issue_node(other, "n2", ["127.0.0.1"])  # a member's name, from the wrong CA
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE  # it is the node that must refuse
    context.maximum_version = version
    context.load_cert_chain(impostor.certificate_path, impostor.key_path)
    host, port = split(secured.cluster.node("n1").peer)
    with socket.create_connection((host, port), timeout=5) as raw, \
            context.wrap_socket(raw, do_handshake_on_connect=False) as sock:
        with pytest.raises(ssl.SSLError, match="unknown ca"):
            # TLS 1.3 judges the client's certificate after the client's side of the handshake is
            # done: the node's alert then ends the first read.
            sock.do_handshake()
            sock.sendall(frame([0, 1, "ping", None]))
            read_until_closed(sock)


def test_a_client_certificate_on_the_peer_port_gets_no_answer(secured):
    node = secured.cluster.node("n1")
    admin = secured.cluster.credentials()
    with peer_connection(node.peer, admin.ca, Path(admin.cert), Path(admin.key)) as sock:
        sock.sendall(frame([0, 1, "ping", None]))
        assert read_until_closed(sock) == b""
    assert wait_until(lambda: "refused peer connection" in Path(node.log).read_text(), 5.0, interval=0.1)


def test_a_node_certificate_speaks_only_for_its_own_node(secured):
    """A stranger with a certificate of the cluster CA (n9) may talk, but not claim to be n2 in a
    join, nor gossip a state that does not list it."""
    issued = certs.issue_node(secured.cluster.certs_dir, "n9", ["127.0.0.1"])
    nodes = [secured.cluster.node(node_id) for node_id in secured.ids]
    n2 = secured.cluster.node("n2")
    state = state_to_wire(ClusterState.initial([MemberEntry(n.id, n.peer, n.http) for n in nodes], PARTITIONS))
    with peer_connection(nodes[0].peer, secured.cluster.credentials().ca, issued.certificate_path,
                         issued.key_path) as sock:
        sock.sendall(frame([0, 1, "ping", None]))
        assert read_frame(sock) == [1, 1, True]  # the certificate is accepted: what it claims is not
        sock.sendall(frame([0, 2, "join", [n2.id, n2.peer, n2.http]]))
        refused_join = read_frame(sock)
        sock.sendall(frame([0, 3, "gossip", state]))
        refused_gossip = read_frame(sock)
    assert refused_join[:2] == [2, 2] and refused_join[2][0] == "forbidden", refused_join
    assert refused_gossip[:2] == [2, 3] and refused_gossip[2][0] == "forbidden", refused_gossip
    assert [m["id"] for m in secured.client("n1").status()["members"]] == ["n1", "n2", "n3"]


def test_without_credentials_the_api_answers_401_with_a_json_error(secured):
    anonymous = DynamoClient(secured.cluster.node("n1").http, timeout=5,
                             credentials=Credentials(ca=secured.cluster.credentials().ca))
    for request in (anonymous.status, lambda: anonymous.get("k")):
        with pytest.raises(ClientError) as refused:
            request()
        assert refused.value.status == 401
        assert "authentication required" in refused.value.body["error"]


def test_a_reader_certificate_can_get_but_not_put(secured):
    secured.client("n1").put("k", b"by the admin")
    issued = certs.issue_client(secured.cluster.certs_dir, "viewer", Role.READER)
    credentials = Credentials(ca=secured.cluster.credentials().ca, cert=str(issued.certificate_path),
                              key=str(issued.key_path))
    reader = DynamoClient(secured.cluster.node("n2").http, timeout=5, credentials=credentials)
    assert reader.get("k").siblings == [b"by the admin"]
    with pytest.raises(ClientError) as refused:
        reader.put("k", b"by the reader")
    assert refused.value.status == 403
    assert "viewer" in refused.value.body["error"] and "writer" in refused.value.body["error"]


def test_a_writer_token_can_put_and_an_unknown_one_cannot(make_cluster, tmp_path):
    token = certs.add_token(tmp_path / "tokens", "app", Role.WRITER)
    cluster = make_cluster(3, tls=True, auth_tokens=str(tmp_path / "tokens" / certs.TOKENS))
    ca = cluster.cluster.credentials().ca
    writer = DynamoClient(cluster.cluster.node("n1").http, timeout=5, credentials=Credentials(ca=ca, token=token))
    writer.put("k", b"by the app")
    assert cluster.client("n3").get("k").siblings == [b"by the app"]
    stranger = DynamoClient(cluster.cluster.node("n1").http, timeout=5,
                            credentials=Credentials(ca=ca, token="not-" + token))
    with pytest.raises(ClientError) as refused:
        stranger.put("k", b"by a stranger")
    assert refused.value.status == 401


def dynactl(*args: str, cwd: Path, check: int | None = 0) -> subprocess.CompletedProcess:
    """The real console script, with none of the DYNACTL_ variables of the environment."""
    environment = {name: value for name, value in os.environ.items() if not name.startswith("DYNACTL_")}
    result = subprocess.run([str(BIN / "dynactl"), *args], cwd=cwd, env=environment, capture_output=True, text=True,
                            timeout=120, check=False)
    if check is not None:
        assert result.returncode == check, f"exit {result.returncode}: {result.stdout}\n{result.stderr}"
    return result


def test_dynactl_commands_work_unchanged_against_local_up_tls(tmp_path):
    base = free_base_port(4)
    up = dynactl("local", "up", "--nodes", "3", "--tls", "--base-port", str(base), "--partitions", "16", cwd=tmp_path)
    try:
        assert up.stdout.splitlines() == [f"n{i} http://127.0.0.1:{base + i}" for i in (1, 2, 3)]
        recorded = json.loads((tmp_path / ".dynamo" / "local" / "cluster.json").read_text())
        assert set(recorded["tls"]) == {"ca", "cert", "key"}
        status = json.loads(dynactl("--format", "json", "status", cwd=tmp_path).stdout)
        assert [(m["id"], m["status"]) for m in status["members"]] == [("n1", "up"), ("n2", "up"), ("n3", "up")]
        assert json.loads(dynactl("--format", "json", "ring", cwd=tmp_path).stdout)["partitions"] == 16
        dynactl("put", "cart", "milk", cwd=tmp_path)
        assert "milk" in dynactl("--node", f"127.0.0.1:{base + 2}", "get", "cart", cwd=tmp_path).stdout
        assert "put" in json.loads(dynactl("--format", "json", "stats", cwd=tmp_path).stdout)["operations"]
        added = dynactl("local", "add", cwd=tmp_path)  # a node added later gets its own certificate
        assert added.stdout.startswith(f"n4 http://127.0.0.1:{base + 4} joined")
        assert dynactl("local", "status", cwd=tmp_path).stdout.count("True") == 4
    finally:
        dynactl("local", "down", "--wipe", cwd=tmp_path, check=None)


def test_unusable_credentials_are_a_usage_error_not_a_traceback(tmp_path):
    missing = dynactl("--node", "127.0.0.1:1", "--ca", str(tmp_path / "no-ca.pem"), "status", cwd=tmp_path, check=2)
    assert "cannot use the CA file" in missing.stderr and "Traceback" not in missing.stderr
    half = dynactl("--node", "127.0.0.1:1", "--cert", str(tmp_path / "client.pem"), "status", cwd=tmp_path, check=2)
    assert "need --ca" in half.stderr and "Traceback" not in half.stderr


def test_a_short_dynacheck_run_against_a_secured_local_cluster_is_valid(tmp_path):
    finished = subprocess.run([str(BIN / "dynacheck"), "run", "--local", "3", "--tls", "--workload", "register",
                               "--nemesis", "none", "--time-limit", "3", "--rate", "30", "--store", str(tmp_path),
                               "--format", "json"], capture_output=True, text=True, timeout=180, check=False)
    report = json.loads(finished.stdout)
    assert finished.returncode == 0, json.dumps(report["checkers"], indent=1)[:3000] + finished.stderr[-2000:]
    run_dir = Path(report["run"])
    assert json.loads((run_dir / "test.json").read_text())["tls"] is True
    assert "HttpFactory (TLS)" in (run_dir / "nodes" / "n1" / "dynamod.log").read_text()
    assert report["checkers"]["siblings"]["acknowledged_count"] > 10
