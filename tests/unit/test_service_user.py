"""The service user through the layers that act for it: a nodes file names it, deploy gives node.toml
the role's ownership, and the checker recreates wiped directories owned by it. The commands run here
for real, on files in a temporary directory (chown to the current user, which is always allowed)."""

from __future__ import annotations

import getpass
import grp
import os
import stat
import subprocess

from dynacheck.db import wipe_command
from dynactl.deploy import config_mode_command
from dynactl.inventory import Host, hosts_from_nodes_document


def a_host(tmp_path, **variables) -> Host:
    base = {"dynamod_home": str(tmp_path / "opt"), "dynamod_data_dir": str(tmp_path / "data"),
            "dynamod_log_dir": str(tmp_path / "logs")}
    return Host(name="h1", address="127.0.0.1", vars={**base, **variables})


def test_a_nodes_file_names_the_service_user():
    hosts = hosts_from_nodes_document({"hosts": [{"name": "h1", "address": "10.0.0.1", "service_user": "dynamod"},
                                                 {"name": "h2", "address": "10.0.0.2"}]})
    assert [host.var("dynamod_user") for host in hosts] == ["dynamod", None]


def test_node_toml_gets_group_read_for_the_service_user_whatever_mode_the_upload_left(tmp_path):
    me = getpass.getuser()
    config = tmp_path / "opt" / "node.toml"
    config.parent.mkdir()
    config.write_text("node_id = 'h1'\n")
    config.chmod(0o600)  # what an upload of a NamedTemporaryFile leaves
    if os.geteuid() == 0:
        subprocess.run(config_mode_command(a_host(tmp_path, dynamod_user=me)), shell=True, check=True)
        assert stat.S_IMODE(config.stat().st_mode) == 0o640
        assert config.stat().st_uid == 0 and config.stat().st_gid == grp.getgrnam(me).gr_gid
    subprocess.run(config_mode_command(a_host(tmp_path)), shell=True, check=True)
    assert stat.S_IMODE(config.stat().st_mode) == 0o644


def test_the_checker_recreates_wiped_directories_owned_by_the_service_user(tmp_path):
    me = getpass.getuser()
    group = grp.getgrgid(os.getgid()).gr_name
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "records.db").write_text("old")
    subprocess.run(wipe_command(a_host(tmp_path, dynamod_user=me, dynamod_group=group)), shell=True, check=True)
    for name in ("data", "logs"):
        directory = tmp_path / name
        assert list(directory.iterdir()) == []
        assert stat.S_IMODE(directory.stat().st_mode) == 0o750 and directory.stat().st_uid == os.geteuid()
    assert "chown" not in wipe_command(a_host(tmp_path))  # no service user: left as the SSH user makes them
