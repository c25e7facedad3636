"""The pure parts of the machine testbed: the image's mirror and name, nspawn's command line, the
machine's cgroups, and the refusal of a testbed directory the service user cannot reach."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from click.testing import CliRunner

from dynacheck.cli import cli as dynacheck_cli
from dynactl import machine, rootfs
from dynactl.testbed import Testbed


def test_the_mirror_is_the_first_non_security_uri_of_deb822_or_one_line_sources():
    deb822 = ("Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm\n\n"
              "Types: deb\nURIs: http://deb.debian.org/debian-security\nSuites: bookworm-security\n")
    assert rootfs.mirror_from_sources([deb822]) == "http://mirror.example/debian"
    one_line = ("# deb http://commented.example/debian bookworm main\n"
                "deb [arch=amd64] http://a.example/debian/ bookworm main\n")
    assert rootfs.mirror_from_sources([one_line]) == "http://a.example/debian"
    security_first = "deb http://security.debian.org/debian-security bookworm-security main\n"
    assert rootfs.mirror_from_sources([security_first, deb822]) == "http://mirror.example/debian"
    assert rootfs.mirror_from_sources(["", "deb-src http://src.example/debian bookworm main\n"]) is None


def test_the_image_name_changes_with_its_recipe_and_only_with_it():
    assert rootfs.image_name("http://a/debian") == rootfs.image_name("http://a/debian")
    assert rootfs.image_name("http://a/debian") != rootfs.image_name("http://b/debian")
    argv = rootfs.mmdebstrap_argv(Path("/tmp/image"), "http://a/debian")
    assert argv[-3:] == [rootfs.SUITE, "/tmp/image", "http://a/debian"]
    assert any(word.startswith("--include=") and "systemd" in word and "openssh-server" in word for word in argv)


def test_nspawn_boots_the_root_in_the_hosts_namespace_without_registering_or_a_unit():
    argv = machine.nspawn_argv(Path("/m/root"), "dtabc-h1", "dtabc-h1")
    assert argv[0] == "systemd-nspawn"
    for flag in ("--keep-unit", "--register=no", "--boot", "--directory=/m/root",
                 "--network-namespace-path=/run/netns/dtabc-h1", "--capability=CAP_NET_ADMIN", "--resolv-conf=off"):
        assert flag in argv


def test_the_machines_cgroups_are_in_the_hierarchies_this_box_mounts_and_go_deepest_first(tmp_path):
    for hierarchy in ("systemd", "memory"):  # no unified hierarchy here
        (tmp_path / hierarchy).mkdir()
    dirs = machine.cgroup_dirs("dt-h1", root=tmp_path)
    assert dirs == [tmp_path / "systemd" / "dt-h1", tmp_path / "memory" / "dt-h1"]
    (dirs[0] / "system.slice" / "ssh.service").mkdir(parents=True)
    (dirs[0] / "init.scope").mkdir()
    assert machine.remove_cgroups("dt-h1", root=tmp_path) == [str(dirs[0])]
    assert not dirs[0].exists() and machine.remove_cgroups("dt-h1", root=tmp_path) == []


def test_a_netns_testbed_under_a_directory_others_cannot_traverse_puts_its_nodes_where_they_can(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o700)
    locked.chmod(0o700)
    bed = Testbed(str(locked / "bed"))
    bed._choose_node_root()
    assert bed.node_dir("h1") == Path("/var/tmp") / f"dynactl-{bed.prefix}" / "h1"
    assert bed.host_dir("h1") == locked / "bed" / "hosts" / "h1"  # keys and sshd files stay in DIR
    assert (locked / "bed").stat().st_mode & 0o055 == 0o055
    open_parent = Path(tempfile.mkdtemp(dir="/tmp"))  # /tmp and / let everyone through
    try:
        open_parent.chmod(0o755)
        reachable = Testbed(str(open_parent / "bed"))
        reachable._choose_node_root()
        assert reachable.node_dir("h1") == open_parent / "bed" / "hosts" / "h1"
    finally:
        shutil.rmtree(open_parent)


def test_dynacheck_refuses_tls_on_a_machine_testbed_before_anything_runs(tmp_path):
    (tmp_path / "testbed.json").write_text(json.dumps({"prefix": "dtx", "kind": "machine", "hosts": []}))
    result = CliRunner().invoke(dynacheck_cli, ["run", "--testbed", "3", "--testbed-dir", str(tmp_path), "--tls",
                                                "--store", str(tmp_path / "store")])
    assert result.exit_code == 2
    assert "--tls with --testbed needs netns hosts" in result.output and "--nodes-file" in result.output
    assert not (tmp_path / "store").exists()
