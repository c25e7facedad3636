"""Where the tools find the credentials of a secured cluster: dynactl's options and environment,
a local cluster's cluster.json (for its own nodes only), a nodes file's "tls" object, a host's
dynactl_tls variable (for deploy's health checks and the host's own start-up check); and
dynacheck's --tls checks of a nodes file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from dynacheck.cli import cli as dynacheck_cli
from dynactl import certs
from dynactl.cli_deploy import _hosts as deploy_hosts
from dynactl.context import Context
from dynactl.credentials import (
    HOST_CREDENTIALS_VAR,
    host_credentials,
    make_authority,
    node_tls_settings,
    nodes_file_credentials,
    with_credentials,
)
from dynactl.inventory import Host, InventoryError
from dynactl.local import LocalCluster, LocalNode
from dynactl.service import Service
from dynamod.client import Credentials, CredentialsError


@pytest.fixture
def no_dynactl_environment(monkeypatch):
    for variable in ("DYNACTL_CA", "DYNACTL_CERT", "DYNACTL_KEY", "DYNACTL_TOKEN", "DYNACTL_NODE"):
        monkeypatch.delenv(variable, raising=False)


def write_nodes_file(path, **extra) -> str:
    path.write_text(json.dumps({"hosts": [{"name": "h1", "address": "10.0.0.1"}], **extra}))
    return str(path)


def test_a_nodes_file_names_credentials_relative_to_itself(tmp_path):
    path = write_nodes_file(tmp_path / "nodes.json", tls={"ca": "certs/ca.pem", "cert": "/abs/c.pem",
                                                         "key": "certs/c.key", "token": "t0ken"})
    assert nodes_file_credentials(path) == Credentials(ca=str(tmp_path / "certs" / "ca.pem"), cert="/abs/c.pem",
                                                       key=str(tmp_path / "certs" / "c.key"), token="t0ken")
    assert nodes_file_credentials(write_nodes_file(tmp_path / "plain.json")) is None
    (tmp_path / "inventory.ini").write_text("[dynamod]\nh1 ansible_host=10.0.0.1\n")
    assert nodes_file_credentials(tmp_path / "inventory.ini") is None


def test_a_nodes_file_with_half_a_certificate_is_refused_by_name(tmp_path):
    path = write_nodes_file(tmp_path / "nodes.json", tls={"ca": "ca.pem", "cert": "c.pem"})
    with pytest.raises(InventoryError, match=r"nodes.json: tls: a client certificate needs its key"):
        nodes_file_credentials(path)


def test_hosts_carry_credentials_as_an_object_or_as_inventory_text():
    credentials = Credentials(ca="/ca.pem", token="t")
    plain = Host(name="h1", address="10.0.0.1")
    assert host_credentials(plain) is None
    assert with_credentials(plain, None) is plain
    assert host_credentials(with_credentials(plain, credentials)) is credentials  # its TLS context is shared
    from_yaml = Host(name="h1", address="10.0.0.1", vars={HOST_CREDENTIALS_VAR: {"ca": "/ca.pem", "token": "t"}})
    from_ini = Host(name="h1", address="10.0.0.1", vars={HOST_CREDENTIALS_VAR: '{"ca": "/ca.pem", "token": "t"}'})
    assert host_credentials(from_yaml) == host_credentials(from_ini) == credentials
    with pytest.raises(CredentialsError, match="h1: dynactl_tls is not a JSON object"):
        host_credentials(Host(name="h1", address="10.0.0.1", vars={HOST_CREDENTIALS_VAR: "ca.pem"}))


def test_an_authority_is_kept_and_node_certificates_name_their_hosts(tmp_path):
    first = make_authority(tmp_path, "test", "admin")
    ca_before = (tmp_path / certs.CA_CERT).read_bytes()
    assert make_authority(tmp_path, "test", "admin") == first  # the CA stays; the client is issued afresh
    assert (tmp_path / certs.CA_CERT).read_bytes() == ca_before
    settings = node_tls_settings(tmp_path, "n1", ["127.0.0.1:8001", "127.0.0.1:7001"])
    assert settings["tls_ca"] == first.ca
    shown = certs.describe(settings["tls_cert"])
    assert (shown["name"], shown["ips"]) == ("n1", ["127.0.0.1"])
    assert certs.describe(first.cert)["role"] == "admin"


def secured_local_cluster(directory) -> LocalCluster:
    cluster = LocalCluster(str(directory))
    cluster.nodes = [LocalNode(id="n1", http="127.0.0.1:8001", peer="127.0.0.1:7001", pid=None,
                               data_dir="d", log="l", config="c")]
    cluster.tls = make_authority(cluster.certs_dir, "test", "dynactl")
    cluster.save()
    return cluster


def test_dynactl_uses_the_local_clusters_credentials_for_its_nodes_only(tmp_path, monkeypatch,
                                                                        no_dynactl_environment):
    monkeypatch.chdir(tmp_path)
    cluster = secured_local_cluster(tmp_path / ".dynamo" / "local")
    context = Context(None, "table")
    assert context.node_address() == "127.0.0.1:8001"
    assert context.credentials_for("127.0.0.1:8001") == cluster.tls
    assert context.credentials_for("10.0.0.9:8000") is None  # a plain cluster elsewhere stays plain
    assert LocalCluster(cluster.directory).load().credentials() == cluster.tls


def test_dynactl_options_and_environment_win_over_the_local_cluster(tmp_path, monkeypatch, no_dynactl_environment):
    monkeypatch.chdir(tmp_path)
    cluster = secured_local_cluster(tmp_path / ".dynamo" / "local")
    monkeypatch.setenv("DYNACTL_TOKEN", "from-the-environment")
    chosen = Context(None, "table", {"ca": cluster.tls.ca}).credentials_for("127.0.0.1:8001")
    assert chosen == Credentials(ca=cluster.tls.ca, token="from-the-environment")


def test_dynactl_credentials_without_a_ca_exit_2(no_dynactl_environment, capsys):
    with pytest.raises(SystemExit) as exited:
        Context("127.0.0.1:1", "table", {"token": "t"}).credentials_for("127.0.0.1:1")
    assert exited.value.code == 2
    assert "need --ca" in capsys.readouterr().err


def test_dynacheck_tls_needs_a_nodes_file_that_names_credentials_and_the_other_way_round(tmp_path):
    plain = write_nodes_file(tmp_path / "plain.json")
    secured = write_nodes_file(tmp_path / "secured.json", tls={"ca": "ca.pem", "token": "t"})
    runner = CliRunner()
    refused = runner.invoke(dynacheck_cli, ["run", "--nodes-file", plain, "--tls"])
    assert refused.exit_code == 2 and 'give it a "tls" object' in refused.output
    refused = runner.invoke(dynacheck_cli, ["run", "--nodes-file", secured])
    assert refused.exit_code == 2 and "run with --tls" in refused.output


def test_a_host_checks_its_secured_node_against_the_ca_its_config_names(tmp_path):
    config = tmp_path / "node.toml"
    config.write_text('node_id = "n1"\nhttp = "127.0.0.1:8001"\npeer = "127.0.0.1:7001"\n'
                      'tls_cert = "tls/node.pem"\ntls_key = "tls/node.key"\ntls_ca = "tls/ca.pem"\n')
    certs.init_ca(tmp_path / "tls", "test")
    # Relative paths are the node's, which runs in its config's directory.
    assert Service.from_config(str(config)).probe_credentials() == Credentials(ca=str(tmp_path / "tls" / "ca.pem"))
    config.write_text('node_id = "n1"\nhttp = "127.0.0.1:8001"\npeer = "127.0.0.1:7001"\n')
    assert Service.from_config(str(config)).probe_credentials() is None


def test_deploy_hosts_carry_the_nodes_files_credentials_unless_dynactl_is_given_its_own(tmp_path,
                                                                                       no_dynactl_environment):
    authority = make_authority(tmp_path / "certs", "test", "ops")
    path = write_nodes_file(tmp_path / "nodes.json", tls=authority.as_json())
    _, everyone = deploy_hosts(Context(None, "table"), path)
    assert host_credentials(everyone[0]) == authority
    _, everyone = deploy_hosts(Context(None, "table", {"ca": authority.ca, "token": "t"}), path)
    assert host_credentials(everyone[0]) == Credentials(ca=authority.ca, token="t")


def test_secured_hosts_name_their_files_by_absolute_paths(tmp_path, monkeypatch):
    """A relative certs directory (--testbed-dir .dynamo/demo-testbed) must not reach the nodes'
    configs: a node reads them from its own directory."""
    from dynacheck.db import secure_hosts

    monkeypatch.chdir(tmp_path)
    [host] = secure_hosts([Host(name="h1", address="10.0.0.1")], Path("relative") / "certs")
    config = host.var("dynamod_extra_config")
    assert all(Path(config[name]).is_absolute() and Path(config[name]).is_file()
               for name in ("tls_cert", "tls_key", "tls_ca"))


def test_a_missing_ca_is_a_service_error_not_a_crash(tmp_path):
    from dynactl.service import Service, ServiceError

    config = tmp_path / "node.toml"
    config.write_text('node_id = "n1"\ntls_cert = "a.pem"\ntls_key = "a.key"\ntls_ca = "missing-ca.pem"\n')
    with pytest.raises(ServiceError, match="missing-ca.pem"):
        Service.from_config(str(config)).probe_credentials()
