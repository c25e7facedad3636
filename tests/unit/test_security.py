"""The node's side of security: TLS files checked at start (a half or mismatched configuration is
refused with the file at fault), roles per API operation (401/403), and the write fast path never
bypassing TLS. Files are made with dynactl's certs module in a temporary directory; no process."""

from __future__ import annotations

import socket

import pytest
from twisted.internet import protocol, reactor, tcp
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure

from dynactl import certs
from dynamod.config import ConfigError, build_config
from dynamod.main import check_security_files
from dynamod.net.writes import write_through
from dynamod.security.auth import Authenticator
from dynamod.security.identity import Principal, Role
from dynamod.security.tls import TlsError, node_tls
from dynamod.security.tokens import parse_tokens, token_digest


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    directory = tmp_path_factory.mktemp("pki")
    certs.init_ca(directory, "test")
    certs.issue_node(directory, "n1", ["127.0.0.1"])
    certs.issue_node(directory, "n2", ["127.0.0.1"])
    certs.issue_client(directory, "ops", Role.ADMIN)
    other = tmp_path_factory.mktemp("other-pki")
    certs.init_ca(other, "test")
    certs.issue_node(other, "n1", ["127.0.0.1"])
    return directory, other


def node_settings(directory, node_id="n1", **overrides):
    return {"node_id": node_id, "tls_cert": str(directory / "nodes" / f"{node_id}.pem"),
            "tls_key": str(directory / "nodes" / f"{node_id}.key"), "tls_ca": str(directory / "ca.pem"), **overrides}


def test_a_complete_tls_configuration_loads_and_names_its_node(pki):
    directory, _ = pki
    material = node_tls(build_config(node_settings(directory)))
    assert material.principal == Principal("node", "n1")
    assert material.peer_server_options().getContext() is not None
    assert material.http_server_options().getContext() is not None


@pytest.mark.parametrize("change, message", [
    (lambda d, o: {"tls_key": str(d / "nodes" / "n2.key")}, "does not belong to the certificate"),
    (lambda d, o: {"tls_ca": str(o / "ca.pem")}, "was not issued by the CA"),
    (lambda d, o: {"tls_cert": str(d / "clients" / "ops.pem"), "tls_key": str(d / "clients" / "ops.key")},
     "names no node"),
    (lambda d, o: {"tls_cert": str(d / "nodes" / "n2.pem"), "tls_key": str(d / "nodes" / "n2.key")},
     "names node 'n2', not this node 'n1'"),
    (lambda d, o: {"tls_ca": str(d / "nowhere.pem")}, "cannot read the CA"),
    (lambda d, o: {"tls_ca": str(d / "nodes" / "n1.key")}, "is not a PEM certificate"),
])
def test_tls_files_that_do_not_fit_are_refused_naming_the_file(pki, change, message):
    directory, other = pki
    config = build_config(node_settings(directory, **change(directory, other)))
    with pytest.raises(TlsError, match=message):
        node_tls(config)
    with pytest.raises(ConfigError, match=message):  # what dynamod and --check-config say, exit 2
        check_security_files(config)


def test_half_a_tls_configuration_and_tokens_without_tls_are_refused():
    with pytest.raises(ConfigError, match="half a TLS configuration"):
        build_config({"node_id": "n1", "tls_cert": "a.pem", "tls_key": "a.key"})
    with pytest.raises(ConfigError, match="auth_tokens needs TLS"):
        build_config({"node_id": "n1", "auth_tokens": "tokens"})


def test_a_bad_token_file_is_refused_at_start(pki, tmp_path):
    directory, _ = pki
    tokens = tmp_path / "tokens"
    tokens.write_text("app writer not-a-digest\n")
    with pytest.raises(ConfigError, match="line 1"):
        check_security_files(build_config(node_settings(directory, auth_tokens=str(tokens))))


READER, WRITER, ADMIN = (Principal("client", name, role) for name, role in
                         (("r", Role.READER), ("w", Role.WRITER), ("a", Role.ADMIN)))


@pytest.mark.parametrize("op, allowed", [
    ("get", {READER, WRITER, ADMIN}), ("put", {WRITER, ADMIN}), ("delete", {WRITER, ADMIN}),
    ("status", {ADMIN}), ("join", {ADMIN}), ("leave", {ADMIN}), ("replica", {ADMIN}), ("ring", {ADMIN}),
    ("metrics", {READER, WRITER, ADMIN}), ("other", {READER, WRITER, ADMIN}),
])
def test_each_operation_needs_its_role(op, allowed):
    auth = Authenticator(None)
    for who in (READER, WRITER, ADMIN):
        refusal = auth.refusal(op, who, None)
        assert (refusal is None) == (who in allowed), (op, who)
        if refusal is not None:
            assert refusal.status == 403 and who.name in refusal.reason
    assert auth.refusal(op, None, None).status == 401


def test_tokens_authenticate_and_anything_else_is_401():
    token = "s3cret-token-value"
    auth = Authenticator(parse_tokens(f"app writer {token_digest(token)}\n"))
    assert auth.refusal("put", None, f"Bearer {token}".encode()) is None
    assert auth.refusal("status", None, f"Bearer {token}".encode()).status == 403
    for header in (b"Bearer wrong", b"Basic YTpi", b"Bearer", b"token"):
        assert auth.refusal("get", None, header).status == 401, header


def test_metrics_may_be_opened_to_anyone_and_node_certificates_get_nothing():
    assert Authenticator(None, metrics_role="anonymous").refusal("metrics", None, None) is None
    assert Authenticator(None, metrics_role="admin").refusal("metrics", READER, None).status == 403
    refusal = Authenticator(None).refusal("get", Principal("node", "n2"), None)
    assert refusal.status == 403 and "peer port" in refusal.reason


def test_the_write_fast_path_sends_on_plain_tcp_and_never_under_tls(pki):
    """write_through sends on the socket itself only for a plain TCP connection: a TLS transport
    forwards ``socket`` to the TCP connection under it, which would carry the bytes unencrypted."""
    sent = []

    class RawSocket:
        def send(self, data):
            sent.append(data)
            return len(data)

    class Recorder(StringTransport):
        """Looks like an idle TCP connection to anything that reads its attributes."""

        socket, dataBuffer, _tempDataBuffer, connected, disconnecting = RawSocket(), b"", [], 1, 0

        def write(self, data):
            sent.append(data)

    options = node_tls(build_config(node_settings(pki[0]))).http_server_options()
    tls_factory = TLSMemoryBIOFactory(options, False, protocol.Factory.forProtocol(protocol.Protocol))
    tls = tls_factory.buildProtocol(None)
    tls.makeConnection(Recorder())  # a TLS protocol over a transport that records every write
    write_through(tls, b"plaintext")
    assert all(b"plaintext" not in chunk for chunk in sent)  # went through TLS (buffered, encrypted)

    ours, theirs = socket.socketpair()
    transport = tcp.Server(ours, protocol.Protocol(), ("127.0.0.1", 1), None, 0, reactor)
    try:
        write_through(transport, b"direct")
        theirs.settimeout(2)
        assert theirs.recv(100) == b"direct"  # sent at once, by write_through: the reactor never ran
        assert not transport.dataBuffer and not transport._tempDataBuffer
        transport.connectionLost(Failure(ConnectionDone()))  # Twisted deletes .socket here
        write_through(transport, b"late")  # an answer for a peer that is gone: dropped, no error
    finally:
        ours.close()
        theirs.close()
