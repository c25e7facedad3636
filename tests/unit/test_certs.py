"""dynactl certs: the cluster CA, node and client certificates, tokens, file modes, and the CLI."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import stat

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import SSL

from dynactl.certs import (
    CertsError,
    CertsExist,
    NotIssued,
    add_token,
    describe,
    host_names,
    init_ca,
    issue_client,
    issue_node,
    issued_by,
    parse_host,
    verify_chain,
)
from dynactl.cli import cli
from dynamod.security.identity import Principal, Role, principal_of
from dynamod.security.tokens import load_tokens


def extension(cert: x509.Certificate, kind):
    return cert.extensions.get_extension_for_class(kind)


def mode_of(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@contextlib.contextmanager
def umask(mask: int):
    previous = os.umask(mask)
    try:
        yield
    finally:
        os.umask(previous)


@pytest.fixture
def certs_dir(tmp_path):
    directory = tmp_path / "certs"
    init_ca(directory, "test-cluster")
    return directory


# -- the CA ------------------------------------------------------------------------------------------


def test_the_ca_may_sign_leaves_only(certs_dir):
    ca = x509.load_pem_x509_certificate((certs_dir / "ca.pem").read_bytes())
    constraints = extension(ca, x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca and constraints.value.path_length == 0
    usage = extension(ca, x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign and not usage.digital_signature
    assert extension(ca, x509.SubjectKeyIdentifier).value
    assert ca.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "test-cluster"
    assert isinstance(ca.public_key(), ec.EllipticCurvePublicKey) and ca.public_key().curve.name == "secp256r1"
    ca.verify_directly_issued_by(ca)
    assert principal_of(ca) is None


def test_init_refuses_to_replace_a_ca_unless_forced(certs_dir):
    before = (certs_dir / "ca.pem").read_bytes()
    with pytest.raises(CertsExist, match="ca.pem"):
        init_ca(certs_dir, "test-cluster")
    assert (certs_dir / "ca.pem").read_bytes() == before
    init_ca(certs_dir, "test-cluster", force=True)
    assert (certs_dir / "ca.pem").read_bytes() != before
    assert sorted(p.name for p in certs_dir.iterdir()) == ["ca.key", "ca.pem"]  # no temporary files left


@pytest.mark.parametrize("bad", [{"cluster_name": ""}, {"days": 0}])
def test_init_refuses_a_bad_cluster_name_or_lifetime(tmp_path, bad):
    with pytest.raises(CertsError):
        init_ca(tmp_path / "certs", **{"cluster_name": "c", **bad})


# -- node and client certificates ---------------------------------------------------------------------


def test_a_node_certificate_is_issued_by_the_ca_and_names_the_node(certs_dir):
    issued = issue_node(certs_dir, "n1", ["10.0.0.1:7001", "node1.example.com:8001", "[::1]:9000", "10.0.0.1:8001"])
    cert = x509.load_pem_x509_certificate(issued.certificate_path.read_bytes())
    ca = x509.load_pem_x509_certificate((certs_dir / "ca.pem").read_bytes())
    cert.verify_directly_issued_by(ca)
    assert principal_of(cert) == Principal("node", "n1")
    san = extension(cert, x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["node1.example.com"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.1"), ipaddress.ip_address("::1")]
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["dynamo:node:n1"]
    assert list(extension(cert, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.SERVER_AUTH,
                                                                  ExtendedKeyUsageOID.CLIENT_AUTH]
    assert extension(cert, x509.KeyUsage).value.digital_signature
    assert extension(cert, x509.BasicConstraints).value.ca is False
    assert (extension(cert, x509.AuthorityKeyIdentifier).value.key_identifier
            == extension(ca, x509.SubjectKeyIdentifier).value.digest)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "n1"
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "test-cluster"
    assert issued.key_path == certs_dir / "nodes" / "n1.key"


def test_a_node_certificate_names_only_the_hosts_given(certs_dir):
    cert = issue_node(certs_dir, "n1", []).certificate
    san = extension(cert, x509.SubjectAlternativeName).value
    assert [type(name) for name in san] == [x509.UniformResourceIdentifier]


def test_a_client_certificate_names_the_client_and_its_role_for_client_use_only(certs_dir):
    cert = issue_client(certs_dir, "prometheus", Role.READER).certificate
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate((certs_dir / "ca.pem").read_bytes()))
    assert principal_of(cert) == Principal("client", "prometheus", Role.READER)
    assert list(extension(cert, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert (certs_dir / "clients" / "prometheus.pem").exists()


def test_serial_numbers_differ(certs_dir):
    serials = {issue_node(certs_dir, f"n{i}", []).certificate.serial_number for i in range(5)}
    assert len(serials) == 5


def test_a_leaf_does_not_outlive_its_ca(tmp_path):
    init_ca(tmp_path, "c", days=10)
    ca = x509.load_pem_x509_certificate((tmp_path / "ca.pem").read_bytes())
    assert issue_node(tmp_path, "n1", [], days=825).certificate.not_valid_after_utc <= ca.not_valid_after_utc


def test_a_certificate_from_another_ca_does_not_verify(tmp_path):
    # The same cluster name, so the issuer names match and only the signature can tell them apart.
    init_ca(tmp_path / "ours", "same")
    init_ca(tmp_path / "theirs", "same")
    ours = issue_node(tmp_path / "ours", "n1", []).certificate_path
    theirs = issue_node(tmp_path / "theirs", "n1", []).certificate_path
    ca_pem = (tmp_path / "ours" / "ca.pem").read_bytes()
    verify_chain(ca_pem, ours.read_bytes())
    with pytest.raises(NotIssued):
        verify_chain(ca_pem, theirs.read_bytes())
    assert issued_by(tmp_path / "ours" / "ca.pem", ours)
    assert not issued_by(tmp_path / "ours" / "ca.pem", theirs)


def test_issuing_needs_a_ca(tmp_path):
    with pytest.raises(CertsError, match="no CA in .*dynactl certs init"):
        issue_node(tmp_path, "n1", [])
    assert list(tmp_path.iterdir()) == []


def test_a_ca_key_that_is_not_the_ca_s_is_refused(tmp_path):
    init_ca(tmp_path / "a", "c")
    init_ca(tmp_path / "b", "c")
    (tmp_path / "a" / "ca.key").write_bytes((tmp_path / "b" / "ca.key").read_bytes())
    with pytest.raises(CertsError, match="is not the key of"):
        issue_node(tmp_path / "a", "n1", [])


@pytest.mark.parametrize("name", ["", "two words", "a/b", "..", ".hidden"])
def test_bad_names_are_refused(certs_dir, name):
    with pytest.raises(CertsError, match="bad node name"):
        issue_node(certs_dir, name, [])
    with pytest.raises(CertsError, match="bad client name"):
        issue_client(certs_dir, name, Role.ADMIN)


@pytest.mark.parametrize(("address", "expected"), [
    ("node1", x509.DNSName("node1")),
    ("Node1.Example.COM:7001", x509.DNSName("node1.example.com")),
    ("node1.example.com.", x509.DNSName("node1.example.com")),
    ("10.0.0.1", x509.IPAddress(ipaddress.ip_address("10.0.0.1"))),
    ("10.0.0.1:7001", x509.IPAddress(ipaddress.ip_address("10.0.0.1"))),
    ("[fd00::1]:7001", x509.IPAddress(ipaddress.ip_address("fd00::1"))),
    ("[fd00::1]", x509.IPAddress(ipaddress.ip_address("fd00::1"))),
    ("fd00::1", x509.IPAddress(ipaddress.ip_address("fd00::1"))),
])
def test_an_address_s_host_is_a_dns_name_or_an_ip_address(address, expected):
    assert parse_host(address) == expected


@pytest.mark.parametrize("address", ["", "two words", "host:", "host:0", "host:65536", "host:http", "[10.0.0.1]:1",
                                     "[fd00::1", "[fd00::1]7001", "-bad.example", "a..b", "under_score",
                                     "10.0.0", "10.0.0.256:7001"])
def test_a_bad_address_is_refused(address):
    with pytest.raises(CertsError, match="bad address"):
        parse_host(address)


def test_a_host_given_twice_is_named_once():
    assert host_names(["h:1", "h:2", "10.0.0.1:1", "10.0.0.1:2"]) == [
        x509.DNSName("h"), x509.IPAddress(ipaddress.ip_address("10.0.0.1"))]


# -- files ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mask", [0o000, 0o077])
def test_keys_are_0600_certificates_0644_key_directories_0700_whatever_the_umask(tmp_path, mask):
    with umask(mask):
        init_ca(tmp_path / "certs", "c")
        issue_node(tmp_path / "certs", "n1", [])
        issue_client(tmp_path / "certs", "app", Role.WRITER)
    root = tmp_path / "certs"
    for key in (root / "ca.key", root / "nodes" / "n1.key", root / "clients" / "app.key"):
        assert mode_of(key) == 0o600, key
    for cert in (root / "ca.pem", root / "nodes" / "n1.pem", root / "clients" / "app.pem"):
        assert mode_of(cert) == 0o644, cert
    for directory in (root, root / "nodes", root / "clients"):
        assert mode_of(directory) & 0o077 == 0, directory


def test_keys_are_unencrypted_pkcs8(certs_dir):
    key_pem = issue_node(certs_dir, "n1", []).key_path.read_bytes()
    assert key_pem.startswith(b"-----BEGIN PRIVATE KEY-----")


def test_an_existing_certificate_is_kept_unless_forced(certs_dir):
    first = issue_node(certs_dir, "n1", ["a"])
    key_before = first.key_path.read_bytes()
    with pytest.raises(CertsExist, match="n1.pem"):
        issue_node(certs_dir, "n1", ["b"])
    assert first.key_path.read_bytes() == key_before
    second = issue_node(certs_dir, "n1", ["b"], force=True)
    assert second.key_path.read_bytes() != key_before
    assert second.certificate.serial_number != first.certificate.serial_number
    assert mode_of(second.key_path) == 0o600
    assert sorted(p.name for p in (certs_dir / "nodes").iterdir()) == ["n1.key", "n1.pem"]


def test_a_lone_existing_key_is_refused_before_anything_is_written(certs_dir):
    (certs_dir / "nodes").mkdir(mode=0o700)
    (certs_dir / "nodes" / "n1.key").write_text("mine")
    with pytest.raises(CertsExist, match="n1.key"):
        issue_node(certs_dir, "n1", [])
    assert not (certs_dir / "nodes" / "n1.pem").exists()


def test_the_node_key_and_certificate_load_into_openssl_as_a_pair(certs_dir):
    issued = issue_node(certs_dir, "n1", ["localhost"])
    context = SSL.Context(SSL.TLS_METHOD)
    context.use_certificate_file(str(issued.certificate_path))
    context.use_privatekey_file(str(issued.key_path))
    context.check_privatekey()


def _handshake(certs_dir, server_dir, client_cert, client_key):
    """A mutual-TLS handshake in memory (no sockets): the server trusts ``server_dir``'s CA and
    requires a client certificate. Returns the client certificate the server saw."""
    def context(cert, key, trust):
        ctx = SSL.Context(SSL.TLS_METHOD)
        ctx.use_certificate_file(str(cert))
        ctx.use_privatekey_file(str(key))
        ctx.load_verify_locations(str(trust))
        ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, lambda *args: args[-1] == 1)
        return ctx

    server = SSL.Connection(context(certs_dir / "nodes" / "n1.pem", certs_dir / "nodes" / "n1.key",
                                    server_dir / "ca.pem"), None)
    client = SSL.Connection(context(client_cert, client_key, certs_dir / "ca.pem"), None)
    server.set_accept_state()
    client.set_connect_state()
    for _ in range(20):
        for side in (client, server):
            with contextlib.suppress(SSL.WantReadError):
                side.do_handshake()
        moved = False
        for source, sink in ((client, server), (server, client)):
            with contextlib.suppress(SSL.WantReadError):
                sink.bio_write(source.bio_read(65536))
                moved = True
        if not moved:
            break
    return server.get_peer_certificate()


def test_node_and_client_certificates_pass_a_mutual_tls_handshake(certs_dir):
    issue_node(certs_dir, "n1", ["localhost"])
    client = issue_client(certs_dir, "app", Role.WRITER)
    seen = _handshake(certs_dir, certs_dir, client.certificate_path, client.key_path)
    assert principal_of(seen.to_cryptography()) == Principal("client", "app", Role.WRITER)


def test_a_client_of_another_ca_fails_the_handshake(tmp_path, certs_dir):
    issue_node(certs_dir, "n1", ["localhost"])
    init_ca(tmp_path / "other", "test-cluster")
    stranger = issue_client(tmp_path / "other", "app", Role.ADMIN)
    with pytest.raises(SSL.Error, match="certificate verify failed"):
        _handshake(certs_dir, certs_dir, stranger.certificate_path, stranger.key_path)


# -- tokens ----------------------------------------------------------------------------------------------


def test_a_token_is_stored_only_as_its_digest(tmp_path):
    token = add_token(tmp_path, "app", Role.WRITER)
    path = tmp_path / "tokens"
    assert token not in path.read_text()
    assert mode_of(path) == 0o600
    assert load_tokens(path).authenticate(token) == Principal("client", "app", Role.WRITER)


def test_tokens_are_added_and_a_duplicate_name_is_refused(tmp_path):
    first = add_token(tmp_path, "app", Role.READER)
    second = add_token(tmp_path, "ops", Role.ADMIN)
    with pytest.raises(CertsExist, match="already has a token named 'app'"):
        add_token(tmp_path, "app", Role.ADMIN)
    table = load_tokens(tmp_path / "tokens")
    assert len(table) == 2
    assert table.authenticate(first).name == "app" and table.authenticate(second).role is Role.ADMIN


def test_a_token_is_appended_after_a_last_line_without_newline(tmp_path):
    first = add_token(tmp_path, "app", Role.READER)
    path = tmp_path / "tokens"
    path.write_text(path.read_text().rstrip("\n"))
    second = add_token(tmp_path, "ops", Role.READER)
    table = load_tokens(path)
    assert table.authenticate(first) and table.authenticate(second)


def test_a_broken_token_file_is_reported_not_appended_to(tmp_path):
    (tmp_path / "tokens").write_text("app boss 00\n")
    with pytest.raises(CertsError, match="line 1"):
        add_token(tmp_path, "ops", Role.READER)
    assert (tmp_path / "tokens").read_text() == "app boss 00\n"


def test_a_bad_token_name_is_refused(tmp_path):
    with pytest.raises(CertsError, match="bad token name"):
        add_token(tmp_path, "two words", Role.READER)


# -- describe --------------------------------------------------------------------------------------------


def test_describe_shows_principal_names_issuer_and_expiry(certs_dir):
    issued = issue_node(certs_dir, "n1", ["10.0.0.1:7001", "n1.local"])
    shown = describe(issued.certificate_path)
    assert shown["principal"] == "node n1" and shown["kind"] == "node" and shown["name"] == "n1"
    assert shown["role"] is None
    assert shown["dns"] == ["n1.local"] and shown["ips"] == ["10.0.0.1"] and shown["uris"] == ["dynamo:node:n1"]
    assert shown["issuer"] == "CN=test-cluster CA,O=test-cluster"
    assert shown["not_after"] == issued.certificate.not_valid_after_utc.isoformat()
    assert describe(certs_dir / "ca.pem")["principal"] is None


def test_describe_refuses_what_is_not_a_certificate(tmp_path):
    (tmp_path / "junk.pem").write_text("junk")
    with pytest.raises(CertsError, match="not a PEM certificate"):
        describe(tmp_path / "junk.pem")
    with pytest.raises(CertsError, match="cannot read"):
        describe(tmp_path / "missing.pem")


# -- the CLI ---------------------------------------------------------------------------------------------


def dynactl(*args: str):
    return CliRunner().invoke(cli, list(args))


def test_cli_init_issue_client_show(tmp_path):
    directory = str(tmp_path / "certs")
    assert dynactl("certs", "init", "--dir", directory, "--cluster", "prod").exit_code == 0
    issued = dynactl("--format", "json", "certs", "issue", "n1", "--dir", directory,
                     "--address", "10.0.0.1:7001", "--address", "n1.prod:8001")
    assert issued.exit_code == 0, issued.output
    document = json.loads(issued.stdout)
    assert document["principal"] == "node n1" and document["ips"] == ["10.0.0.1"] and document["dns"] == ["n1.prod"]
    assert document["key"] == str(tmp_path / "certs" / "nodes" / "n1.key")

    client = dynactl("certs", "client", "app", "--role", "writer", "--dir", directory)
    assert client.exit_code == 0 and "client app (writer)" in client.stdout

    shown = dynactl("--format", "json", "certs", "show", f"{directory}/clients/app.pem", "--ca",
                    f"{directory}/ca.pem")
    assert shown.exit_code == 0
    shown_document = json.loads(shown.stdout)
    assert shown_document["principal"] == "client app (writer)" and shown_document["role"] == "writer"
    assert shown_document["issued_by_ca"] is True
    table = dynactl("certs", "show", f"{directory}/nodes/n1.pem")
    assert table.exit_code == 0 and "node n1" in table.stdout and "10.0.0.1" in table.stdout


def test_cli_show_against_another_ca_says_not_issued(tmp_path):
    for name in ("a", "b"):
        assert dynactl("certs", "init", "--dir", str(tmp_path / name)).exit_code == 0
    assert dynactl("certs", "issue", "n1", "--dir", str(tmp_path / "a")).exit_code == 0
    shown = dynactl("--format", "json", "certs", "show", str(tmp_path / "a/nodes/n1.pem"),
                    "--ca", str(tmp_path / "b/ca.pem"))
    assert shown.exit_code == 0 and json.loads(shown.stdout)["issued_by_ca"] is False


def test_cli_token_prints_the_token_once_on_stdout(tmp_path):
    result = dynactl("certs", "token", "app", "--role", "reader", "--dir", str(tmp_path))
    assert result.exit_code == 0
    token = result.stdout.strip()
    assert "\n" not in token and "not stored" in result.stderr
    assert token not in (tmp_path / "tokens").read_text()
    assert load_tokens(tmp_path / "tokens").authenticate(token) == Principal("client", "app", Role.READER)
    again = dynactl("certs", "token", "app", "--role", "admin", "--dir", str(tmp_path))
    assert again.exit_code == 1 and "already has a token named 'app'" in again.stderr


def test_cli_refuses_to_overwrite_without_force(tmp_path):
    directory = str(tmp_path)
    assert dynactl("certs", "init", "--dir", directory).exit_code == 0
    again = dynactl("certs", "init", "--dir", directory)
    assert again.exit_code == 1 and "already exist" in again.stderr and "--force" in again.stderr
    assert dynactl("certs", "init", "--dir", directory, "--force").exit_code == 0


@pytest.mark.parametrize("command", [["client", "app"], ["token", "app"]])
def test_cli_bad_role_exits_2_with_a_message(tmp_path, command):
    result = dynactl("certs", *command, "--role", "boss", "--dir", str(tmp_path))
    assert result.exit_code == 2
    assert "'boss' is not one of 'reader', 'writer', 'admin'" in result.stderr
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit)


@pytest.mark.parametrize(("args", "message"), [
    (["issue", "n1"], "no CA in"),
    (["issue", "n1", "--address", "bad host"], "bad address 'bad host'"),
    (["issue", "a/b"], "bad node name"),
])
def test_cli_bad_input_exits_2_with_one_line(tmp_path, args, message):
    directory = tmp_path / "certs"
    if message != "no CA in":
        init_ca(directory, "c")
    result = dynactl("certs", *args, "--dir", str(directory))
    assert result.exit_code == 2
    assert result.stderr.startswith("dynactl: ") and message in result.stderr and result.stderr.count("\n") == 1
    assert isinstance(result.exception, SystemExit)


def test_cli_show_of_a_missing_file_exits_2(tmp_path):
    result = dynactl("certs", "show", str(tmp_path / "missing.pem"))
    assert result.exit_code == 2 and "cannot read" in result.stderr
