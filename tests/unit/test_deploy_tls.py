"""dynactl deploy with dynamod_tls: node.toml names the TLS files the role's layout puts on a host,
certificates are issued on the controller when missing (the node's names its address), and the
health checks get an admin client certificate of the same CA. No host is contacted."""

from __future__ import annotations

from pathlib import Path

from cryptography import x509

from dynactl.deploy import controller_credentials, render_node_toml, tls_files
from dynactl.inventory import Host
from dynamod.config import build_config, load_toml
from dynamod.security.identity import Principal, Role, principal_of


def tls_host(tmp_path: Path, **extra) -> Host:
    return Host(name="h1", address="10.0.0.1", vars={"dynamod_tls": "true", "dynamod_tls_dir": str(tmp_path / "certs"),
                                                       "dynamod_home": "/opt/dynamod", **extra})


def test_node_toml_names_the_tls_files_and_stays_valid(tmp_path):
    host = tls_host(tmp_path, dynamod_auth_tokens_file=str(tmp_path / "tokens"))
    path = tmp_path / "node.toml"
    path.write_text(render_node_toml(host, [host]))
    values = load_toml(str(path))
    assert (values["tls_cert"], values["tls_key"], values["tls_ca"], values["auth_tokens"]) == (
        "/opt/dynamod/tls/node.pem", "/opt/dynamod/tls/node.key", "/opt/dynamod/tls/ca.pem", "/opt/dynamod/tls/tokens")
    assert build_config(values).tls
    plain = Host(name="h1", address="10.0.0.1")
    assert "tls_" not in render_node_toml(plain, [plain])


def test_missing_certificates_are_issued_on_the_controller_once(tmp_path):
    host = tls_host(tmp_path)
    files = tls_files(host)
    assert [(remote, mode) for _, remote, mode in files] == [
        ("/opt/dynamod/tls/ca.pem", "0644"), ("/opt/dynamod/tls/node.pem", "0644"),
        ("/opt/dynamod/tls/node.key", "0600")]
    node_cert = x509.load_pem_x509_certificate(files[1][0].read_bytes())
    assert principal_of(node_cert) == Principal("node", "h1")
    names = node_cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["10.0.0.1"]
    before = {local: local.read_bytes() for local, _, _ in files}
    assert {local: local.read_bytes() for local, _, _ in tls_files(host)} == before  # a second deploy issues nothing
    assert not any("ca.key" in remote for _, remote, _ in files)


def test_health_checks_get_an_admin_certificate_of_the_same_ca(tmp_path):
    host = tls_host(tmp_path)
    credentials = controller_credentials(host)
    client = x509.load_pem_x509_certificate(Path(credentials.cert).read_bytes())
    assert principal_of(client).role == Role.ADMIN
    assert credentials.ca == str(tmp_path / "certs" / "ca.pem")
    assert controller_credentials(Host(name="h1", address="10.0.0.1")) is None
