"""DynamoClient over HTTPS against a loopback server with certificates of a CA made by
dynactl.certs: the node is verified (CA and host name), the client certificate and the bearer token
reach it, one connection is kept alive across requests (TLS 1.3 session tickets do not count as a
close), and TLS failures are NodeUnavailable with the reason. Credentials' JSON form and checks."""

from __future__ import annotations

import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from dynactl import certs
from dynamod.client import Credentials, CredentialsError, DynamoClient, NodeUnavailable
from dynamod.security.identity import Role
from tests.fake_node import FakeNode, FakeNodeServer


@pytest.fixture
def authority(tmp_path) -> Path:
    directory = tmp_path / "certs"
    certs.init_ca(directory, "test")
    certs.issue_node(directory, "n1", ["127.0.0.1"])
    certs.issue_client(directory, "app", Role.WRITER)
    return directory


def serve(authority: Path, tls: bool = True) -> Iterator[str]:
    FakeNode.reset()
    httpd = FakeNodeServer(("127.0.0.1", 0), FakeNode)
    if tls:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(authority / "nodes" / "n1.pem", authority / "nodes" / "n1.key")
        context.load_verify_locations(authority / certs.CA_CERT)
        context.verify_mode = ssl.CERT_OPTIONAL  # as a node's HTTP port: a certificate or a token
        httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def https_node(authority) -> Iterator[str]:
    yield from serve(authority)


@pytest.fixture
def http_node(authority) -> Iterator[str]:
    yield from serve(authority, tls=False)


def client_credentials(authority: Path, **extra: str) -> Credentials:
    return Credentials(ca=str(authority / certs.CA_CERT), cert=str(authority / "clients" / "app.pem"),
                       key=str(authority / "clients" / "app.key"), **extra)


def test_requests_carry_the_client_certificate_and_token_over_one_kept_alive_connection(authority, https_node):
    client = DynamoClient(https_node, timeout=5, credentials=client_credentials(authority, token="s3cret"))
    for _ in range(3):
        assert client.get("k").found is False
    client.close()
    assert [seen["client"] for seen in FakeNode.seen] == [["dynamo:client:writer:app"]] * 3
    assert {seen["authorization"] for seen in FakeNode.seen} == {"Bearer s3cret"}
    assert len({seen["connection"] for seen in FakeNode.seen}) == 1


def test_an_idle_tls_connection_the_node_closed_is_replaced_before_a_write_is_sent(authority, https_node):
    FakeNode.close_after_answer = True
    client = DynamoClient(https_node, timeout=5, credentials=client_credentials(authority))
    client.write("k", b"v")
    assert FakeNodeServer.closed.wait(5)  # the node has closed the idle connection (close-notify, then FIN)
    client.write("k", b"v")  # would have gone out on the closed connection and come back unknown
    assert [seen["method"] for seen in FakeNode.seen] == ["PUT", "PUT"]
    assert len({seen["connection"] for seen in FakeNode.seen}) == 2


def test_a_tls_read_whose_connection_closes_before_an_answer_is_sent_again_once(authority, https_node):
    FakeNode.drop_second = True
    client = DynamoClient(https_node, timeout=5, credentials=client_credentials(authority))
    assert client.get("k").found is False
    assert client.get("k").found is False
    assert [seen["method"] for seen in FakeNode.seen] == ["GET", "GET dropped", "GET"]


def test_without_a_token_no_authorization_header_is_sent(authority, https_node):
    DynamoClient(https_node, timeout=5, credentials=Credentials(ca=str(authority / certs.CA_CERT))).get("k")
    assert FakeNode.seen[0]["authorization"] is None and FakeNode.seen[0]["client"] == []


def test_a_node_of_another_ca_is_not_accepted(tmp_path, https_node):
    certs.init_ca(tmp_path / "other", "other")
    client = DynamoClient(https_node, timeout=5, credentials=Credentials(ca=str(tmp_path / "other" / certs.CA_CERT)))
    with pytest.raises(NodeUnavailable, match="TLS: certificate verify failed"):
        client.get("k")


def test_a_node_whose_certificate_does_not_name_the_host_is_not_accepted(authority, https_node):
    port = https_node.rpartition(":")[2]
    client = DynamoClient(f"localhost:{port}", timeout=5, credentials=Credentials(ca=str(authority / certs.CA_CERT)))
    with pytest.raises(NodeUnavailable, match="TLS: certificate verify failed: Hostname mismatch"):
        client.get("k")


def test_https_to_a_plain_http_node_says_so(authority, http_node):
    client = DynamoClient(http_node, timeout=5, credentials=Credentials(ca=str(authority / certs.CA_CERT)))
    with pytest.raises(NodeUnavailable, match="plain HTTP"):
        client.get("k")


def test_plain_http_still_works_without_credentials(http_node):
    assert DynamoClient(http_node, timeout=5).get("k").found is False


def test_unusable_files_are_named_when_the_client_is_made(authority, tmp_path):
    with pytest.raises(CredentialsError, match="cannot use the CA file .*missing.pem"):
        DynamoClient("127.0.0.1:1", credentials=Credentials(ca=str(tmp_path / "missing.pem")))
    other = certs.issue_client(authority, "other", Role.READER)
    mismatched = Credentials(ca=str(authority / certs.CA_CERT), cert=str(authority / "clients" / "app.pem"),
                             key=str(other.key_path))
    with pytest.raises(CredentialsError, match="cannot use the client certificate .*app.pem"):
        DynamoClient("127.0.0.1:1", credentials=mismatched)


def test_credentials_round_trip_through_json_and_refuse_half_a_certificate(authority):
    credentials = client_credentials(authority, token="t")
    assert Credentials.from_json(credentials.as_json()) == credentials
    assert Credentials(ca="ca.pem").as_json() == {"ca": "ca.pem"}
    for document, reason in (({"cert": "c.pem", "key": "k.pem"}, "CA"), ({"ca": "ca.pem", "cert": "c.pem"}, "key"),
                             ({"ca": "ca.pem", "tokn": "t"}, "unknown field"), ({"ca": 3}, "non-empty string"),
                             (["ca.pem"], "expected an object")):
        with pytest.raises(CredentialsError, match=reason):
            Credentials.from_json(document, "nodes.json: tls")
