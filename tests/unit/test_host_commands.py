"""What dynactl runs on hosts: node.toml, service commands, per-host results and errors, the local
runner, and the host-side supervisor (``dynactl service``) against a real dynamod."""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import tomllib
from pathlib import Path

import invoke
import paramiko
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from hypothesis import given, settings
from hypothesis import strategies as st

from dynactl import process
from dynactl.cli import cli
from dynactl.deploy import DeployError, founders, render_node_toml, service_command
from dynactl.inventory import Host, host_from_vars
from dynactl.local import fetch_status, port_is_free
from dynactl.remote import HostError, HostResult, LocalHosts, SshHosts, describe_error
from dynactl.service import Service, ServiceError
from dynamod.config import build_config
from dynamod.polling import wait_until

REPO = Path(__file__).resolve().parents[2]
DYNACTL = Path(sys.executable).parent / "dynactl"
NO_UNIT = "dynamod-unit-that-does-not-exist-in-tests"  # never drive a real systemd unit from tests


def host(name: str, **variables) -> Host:
    return host_from_vars(name, variables)


def cluster(**shared) -> list[Host]:
    return [host(f"n{i}", ansible_host=f"10.0.0.{i}", **shared) for i in (1, 2, 3)]


# -- node.toml -----------------------------------------------------------------------------------


def config_of(text: str):
    return build_config(tomllib.loads(text))


def test_node_toml_is_a_valid_config_with_the_hosts_settings():
    hosts = cluster(dynamod_n=3, dynamod_r=1, dynamod_w=3, dynamod_mode="lww", dynamod_sync=False,
                    dynamod_partitions=16, dynamod_data_dir="/data/dyn", dynamod_log_dir="/logs")
    text = render_node_toml(hosts[1], hosts)
    config = config_of(text)
    assert (config.node_id, config.http, config.peer) == ("n2", "10.0.0.2:8000", "10.0.0.2:7000")
    assert (config.n, config.r, config.w, config.mode, config.sync, config.partitions) == (3, 1, 3, "lww", False, 16)
    assert (config.data_dir, config.log_file) == ("/data/dyn", "/logs/dynamod.log")
    assert [(m.id, m.peer, m.http) for m in config.members] == [
        ("n1", "10.0.0.1:7000", "10.0.0.1:8000"), ("n2", "10.0.0.2:7000", "10.0.0.2:8000"),
        ("n3", "10.0.0.3:7000", "10.0.0.3:8000")]
    assert text.startswith("# Written by dynactl deploy.\n") and text.endswith("\n")


def test_node_toml_defaults():
    only = host("solo")
    config = config_of(render_node_toml(only, [only]))
    assert (config.n, config.r, config.w, config.mode, config.sync, config.partitions) == (3, 2, 2, "vclock", True, 64)
    assert (config.http, config.peer, config.data_dir, config.log_file) == (
        "solo:8000", "solo:7000", "/var/lib/dynamod", "/var/log/dynamod/dynamod.log")
    assert config.member_ids == ("solo",)


def test_node_toml_members_use_each_members_own_address_and_ports():
    a = host("a", ansible_host="10.0.0.1", dynamod_address="192.168.1.1", dynamod_http_port=8101)
    b = host("b", ansible_host="10.0.0.2", dynamod_peer_port=7202)
    config = config_of(render_node_toml(a, [a, b]))
    assert (config.http, config.peer) == ("192.168.1.1:8101", "192.168.1.1:7000")
    assert config.member("b").peer == "10.0.0.2:7202" and config.member("b").http == "10.0.0.2:8000"


def test_node_toml_escapes_quotes_and_backslashes():
    tricky = host('n"1', ansible_host="10.0.0.1", dynamod_data_dir='C:\\dyn "amo"\\data\\',
                  dynamod_log_dir="/var/log/it's \\ here", dynamod_mode="vclock")
    config = config_of(render_node_toml(tricky, [tricky]))
    assert config.node_id == 'n"1'
    assert config.data_dir == 'C:\\dyn "amo"\\data\\'
    assert config.log_file == "/var/log/it's \\ here/dynamod.log"
    assert config.member_ids == ('n"1',)


@settings(max_examples=100, deadline=None)
@given(name=st.text(st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=12),
       path=st.text(st.characters(blacklist_categories=("Cc", "Cs")), max_size=30))
def test_node_toml_round_trips_any_printable_name_and_path(name, path):
    node = host(name, ansible_host="127.0.0.1", dynamod_data_dir=path, dynamod_log_dir=path)
    config = config_of(render_node_toml(node, [node]))
    assert (config.node_id, config.data_dir, config.log_file) == (name, path, f"{path}/dynamod.log")


# -- founders ------------------------------------------------------------------------------------


def names(hosts: list[Host]) -> list[str]:
    return [h.name for h in hosts]


def test_every_host_is_a_founder_by_default():
    hosts = cluster()
    assert all(names(founders(h, hosts)) == ["n1", "n2", "n3"] for h in hosts)


def test_founders_from_a_list_keep_inventory_order():
    hosts = [host(n, dynamod_founders=["n3", "n1"]) for n in ("n1", "n2", "n3")]
    assert names(founders(hosts[0], hosts)) == ["n1", "n3"]
    assert names(founders(hosts[2], hosts)) == ["n1", "n3"]


def test_a_host_outside_the_founders_lists_only_itself():
    hosts = [host(n, dynamod_founders=["n1", "n2"]) for n in ("n1", "n2", "n4")]
    assert names(founders(hosts[2], hosts)) == ["n4"]
    config = config_of(render_node_toml(hosts[2], founders(hosts[2], hosts)))
    assert config.member_ids == ("n4",)


def test_a_host_not_deployed_with_the_others_lists_only_itself():
    hosts = cluster()
    stranger = host("n9")
    assert names(founders(stranger, hosts)) == ["n9"]


def test_founders_written_as_text_are_split_on_commas_not_matched_by_substring():
    """An INI inventory gives text, ``dynamod_founders=n10, n2``: 'n1' is not a founder."""
    hosts = [host(n, dynamod_founders="n10, n2") for n in ("n1", "n2", "n10")]
    assert names(founders(hosts[0], hosts)) == ["n1"]
    assert names(founders(hosts[1], hosts)) == ["n2", "n10"]


# -- service_command -------------------------------------------------------------------------------


def argv(command: str) -> list[str]:
    return shlex.split(command)


@pytest.mark.parametrize("action", ["start", "stop", "restart", "status", "kill", "pause", "resume"])
def test_service_command_by_default(action):
    assert argv(service_command(host("h"), action)) == [
        "/opt/dynamod/venv/bin/dynactl", "service", action, "--config", "/opt/dynamod/node.toml", "--wait", "60"]


def test_service_command_quotes_paths_and_formats_the_wait():
    command = service_command(host("h", dynamod_home="/srv/dyn amo's"), "start", wait=2.5)
    assert argv(command) == ["/srv/dyn amo's/venv/bin/dynactl", "service", "start", "--config",
                             "/srv/dyn amo's/node.toml", "--wait", "2.5"]


def test_service_command_runs_as_the_configured_user():
    assert argv(service_command(host("h", dynamod_user="dynamod"), "stop"))[-2:] == ["--user", "dynamod"]
    assert "--user" not in argv(service_command(host("h", dynamod_user=""), "stop"))


@pytest.mark.parametrize("action, file, expected", [
    ("start", "/ft/clock", True),
    ("restart", "/ft/clock", True),
    ("stop", "/ft/clock", False),
    ("status", "/ft/clock", False),
    ("kill", "/ft/clock", False),
    ("start", "", False),
    ("start", None, False),
])
def test_service_command_uses_faketime_only_to_start(action, file, expected):
    """As in the Ansible role: a non-empty dynamod_faketime_file runs the node under libfaketime."""
    words = argv(service_command(host("h", dynamod_faketime_file=file, dynamod_user="dynamod"), action))
    if expected:
        assert words[-4:] == ["--user", "dynamod", "--faketime", "/ft/clock"]
    else:
        assert "--faketime" not in words


# -- HostResult and describe_error ----------------------------------------------------------------


def test_host_result_lines():
    assert HostResult("h1", ok=True).line() == "h1: ok"
    assert HostResult("h1", ok=True, stdout="  \n").line() == "h1: ok"
    assert HostResult("h1", ok=True, stdout="first\nstarted pid 12\n").line() == "h1: ok (started pid 12)"
    failed = HostResult("h2", ok=False, exit_code=3, stderr="x", error="`false` exited 3: x")
    assert failed.line() == "h2: `false` exited 3: x"
    assert failed.as_json() == {"host": "h2", "ok": False, "exit_code": 3, "stdout": "", "stderr": "x",
                                "error": "`false` exited 3: x"}


TARGET = Host(name="h1", address="10.0.0.1", ssh_user="ops", ssh_key="/keys/id", ssh_port=2222,
              known_hosts="/k/known_hosts")
NO_KEY = Host(name="h2", address="10.0.0.2")


def ed25519_key() -> paramiko.PKey:
    private = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption())
    return paramiko.Ed25519Key(file_obj=io.StringIO(private.decode()))


def result(command: str = "systemctl start dynamod", exited: int = 3, stderr: str = "warn\nreal reason\n"):
    return invoke.Result(stdout="", stderr=stderr, command=command, exited=exited)


@pytest.mark.parametrize("make, host, expected", [
    (lambda: paramiko.AuthenticationException("Authentication failed."), TARGET,
     "ssh authentication failed for ops@10.0.0.1:2222 with key /keys/id"),
    (lambda: paramiko.AuthenticationException("Authentication failed."), NO_KEY,
     "ssh authentication failed for root@10.0.0.2:22 with key (agent/default keys)"),
    (lambda: paramiko.ssh_exception.NoValidConnectionsError({("10.0.0.1", 22): ConnectionRefusedError()}), TARGET,
     "unreachable: nothing accepts SSH at ops@10.0.0.1:2222 (connection refused)"),
    (lambda: TimeoutError("timed out"), TARGET,  # what socket.timeout is (an alias) since Python 3.10
     "unreachable: no answer from ops@10.0.0.1:2222 within the connect timeout"),
    (lambda: TimeoutError(), NO_KEY, "unreachable: no answer from root@10.0.0.2:22 within the connect timeout"),
    (lambda: paramiko.BadHostKeyException("10.0.0.1", ed25519_key(), ed25519_key()), TARGET,
     "host key of 10.0.0.1 does not match /k/known_hosts (man in the middle?)"),
    (lambda: paramiko.BadHostKeyException("10.0.0.2", ed25519_key(), ed25519_key()), NO_KEY,
     "host key of 10.0.0.2 does not match known_hosts (man in the middle?)"),
    (lambda: paramiko.SSHException("Server '10.0.0.1' not found in known_hosts"), TARGET,
     "host key of 10.0.0.1 is not in /k/known_hosts"),
    (lambda: invoke.exceptions.UnexpectedExit(result()), TARGET,
     "`systemctl start dynamod` exited 3: real reason"),
    (lambda: invoke.exceptions.UnexpectedExit(result(stderr="")), TARGET,
     "`systemctl start dynamod` exited 3: no error output"),
    (lambda: invoke.exceptions.CommandTimedOut(result(exited=-1), timeout=2.5), TARGET,
     "timed out after 2.5s: systemctl start dynamod"),
    (lambda: FileNotFoundError(2, "No such file or directory", "/keys/id"), TARGET, "ssh key /keys/id does not exist"),
    (lambda: ConnectionRefusedError(111, "Connection refused"), TARGET,
     "unreachable: ops@10.0.0.1:2222: Connection refused"),
    (lambda: DeployError("pip install failed (exit 1): no matching distribution"), TARGET,
     "pip install failed (exit 1): no matching distribution"),
    (lambda: HostError("plain host error"), TARGET, "plain host error"),
    (lambda: RuntimeError("odd"), TARGET, "RuntimeError: odd"),
], ids=["auth", "auth-no-key", "refused", "socket-timeout", "timeout", "bad-host-key", "bad-host-key-default",
        "unknown-host-key", "unexpected-exit", "unexpected-exit-silent", "command-timeout", "missing-key",
        "oserror", "deploy-error", "host-error", "other"])
def test_describe_error(make, host, expected):
    assert describe_error(make(), host) == expected


def test_a_missing_key_is_reported_before_any_connection(tmp_path: Path):
    missing = str(tmp_path / "no-such-key")
    target = Host(name="h1", address="192.0.2.1", ssh_key=missing)
    with SshHosts([target], connect_timeout=1) as control:
        assert control.run("true") == {"h1": HostResult("h1", ok=False, error=f"ssh key {missing} does not exist")}
        assert control.each(lambda c, h: c.run("true")) == {
            "h1": HostResult("h1", ok=False, error=f"ssh key {missing} does not exist")}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_nothing_listening_for_ssh_is_unreachable():
    port = free_port()
    target = Host(name="h1", address="127.0.0.1", ssh_user="ops", ssh_port=port)
    with SshHosts([target], connect_timeout=2) as control:
        outcome = control.run("true")["h1"]
    assert not outcome.ok
    assert outcome.line() == f"h1: unreachable: nothing accepts SSH at ops@127.0.0.1:{port} (connection refused)"


# -- LocalHosts ----------------------------------------------------------------------------------


LOCAL = [Host(name=n, address="127.0.0.1") for n in ("a", "b", "c")]


def test_local_hosts_run_a_command_on_each_host():
    with LocalHosts(LOCAL) as control:
        results = control.run("echo hello-$((40 + 2))")
    assert list(results) == ["a", "b", "c"]
    for name, outcome in results.items():
        assert (outcome.host, outcome.ok, outcome.exit_code, outcome.stdout) == (name, True, 0, "hello-42\n")
        assert outcome.line() == f"{name}: ok (hello-42)"


def test_local_hosts_run_in_parallel(tmp_path: Path):
    """Each command waits (with a deadline) until every host's command has started."""
    command = (f"d={shlex.quote(str(tmp_path))}; mktemp -p \"$d\" >/dev/null; "
               "for i in $(seq 200); do [ $(ls \"$d\" | wc -l) -ge 3 ] && exit 0; sleep 0.025; done; exit 9")
    with LocalHosts(LOCAL) as control:
        results = control.run(command)
    assert {name: outcome.exit_code for name, outcome in results.items()} == {"a": 0, "b": 0, "c": 0}


def test_a_failing_command_is_a_failed_result_naming_it():
    command = "echo partial; echo warning >&2; echo 'the real reason' >&2; exit 3"
    with LocalHosts(LOCAL[:2]) as control:
        results = control.run(command)
    for name, outcome in results.items():
        assert not outcome.ok and outcome.exit_code == 3
        assert (outcome.stdout, outcome.stderr) == ("partial\n", "warning\nthe real reason\n")
        assert outcome.error == f"`{command}` exited 3: the real reason"
        assert outcome.line() == f"{name}: `{command}` exited 3: the real reason"


def test_a_command_timeout_is_that_hosts_error():
    with LocalHosts(LOCAL[:1]) as control:
        outcome = control.run("sleep 5", timeout=0.3)["a"]
    assert not outcome.ok and outcome.error == "timed out after 0.3s: sleep 5"


def test_run_on_chosen_hosts_only():
    with LocalHosts(LOCAL) as control:
        assert list(control.run("true", hosts=[LOCAL[2], LOCAL[0]])) == ["c", "a"]
        assert control.run("true", hosts=[]) == {}


def test_put_and_get_round_trip_a_file(tmp_path: Path):
    source = tmp_path / "source.txt"
    source.write_bytes(b"line one\n\x00binary\xff\n")
    remote = tmp_path / "remote" / "node.toml"
    remote.parent.mkdir()
    with LocalHosts(LOCAL[:1]) as control:
        put = control.put(str(source), str(remote))
    assert put == {"a": HostResult("a", ok=True)}
    assert remote.read_bytes() == source.read_bytes()
    with LocalHosts(LOCAL[:2]) as control:
        fetched = control.get(str(remote), str(tmp_path / "fetched"))
    for name in ("a", "b"):
        target = tmp_path / "fetched" / name / "node.toml"
        assert fetched[name] == HostResult(name, ok=True, stdout=str(target))
        assert target.read_bytes() == source.read_bytes()


def test_get_of_a_missing_file_fails_that_host(tmp_path: Path):
    with LocalHosts(LOCAL[:1]) as control:
        outcome = control.get(str(tmp_path / "absent.log"), str(tmp_path / "fetched"))["a"]
    assert not outcome.ok and "No such file or directory" in outcome.error


def test_a_missing_file_is_not_called_unreachable(tmp_path: Path):
    with LocalHosts(LOCAL[:1]) as control:
        outcome = control.get(str(tmp_path / "absent.log"), str(tmp_path / "fetched"))["a"]
    assert "unreachable" not in outcome.error


def test_an_exception_in_work_is_that_hosts_error_only():
    barrier = threading.Barrier(len(LOCAL), timeout=10)

    def work(connection, target: Host):
        barrier.wait()  # all hosts are worked on at once
        if target.name == "b":
            raise RuntimeError("disk on fire")
        if target.name == "c":
            raise DeployError("creating directories failed (exit 1): permission denied")
        return connection.run(f"echo {target.name}", hide=True, warn=True, in_stream=False)

    with LocalHosts(LOCAL) as control:
        results = control.each(work)
    assert results == {
        "a": HostResult("a", ok=True, exit_code=0, stdout="a\n", stderr=""),
        "b": HostResult("b", ok=False, error="RuntimeError: disk on fire"),
        "c": HostResult("c", ok=False, error="creating directories failed (exit 1): permission denied"),
    }


def test_work_may_return_a_host_result_or_text():
    def work(connection, target: Host):
        if target.name == "a":
            return HostResult(target.name, ok=False, error="decided here")
        return "changed" if target.name == "b" else None

    with LocalHosts(LOCAL) as control:
        results = control.each(work)
    assert [r.line() for r in results.values()] == ["a: decided here", "b: ok (changed)", "c: ok"]


# -- dynactl service against a real dynamod ------------------------------------------------------


def two_free_ports() -> tuple[int, int]:
    with socket.socket() as one, socket.socket() as two:
        one.bind(("127.0.0.1", 0))
        two.bind(("127.0.0.1", 0))
        ports = one.getsockname()[1], two.getsockname()[1]
    assert all(port_is_free(p) for p in ports)
    return ports


def single_node_toml(directory: Path, http: int, peer: int, **extra) -> str:
    lines = ['node_id = "solo"', f'http = "127.0.0.1:{http}"', f'peer = "127.0.0.1:{peer}"',
             f"data_dir = {json.dumps(str(directory / 'data'))}",
             f"log_file = {json.dumps(str(directory / 'logs' / 'dynamod.log'))}",
             'engine = "memory"', "n = 1", "r = 1", "w = 1", "partitions = 8",
             *(f"{key} = {json.dumps(value)}" for key, value in extra.items())]
    return "\n".join(lines) + "\n"


@pytest.fixture
def node(tmp_path: Path):
    """A node.toml for a single-node cluster on free loopback ports; whatever it started is killed after."""
    http, peer = two_free_ports()
    config = tmp_path / "node.toml"
    config.write_text(single_node_toml(tmp_path, http, peer))
    services: list[Service] = []

    def make(**options) -> Service:
        service = Service.from_config(str(config), unit=NO_UNIT, **options)
        services.append(service)
        return service

    make.config, make.http = config, f"127.0.0.1:{http}"
    yield make
    for service in services:
        pid = service.pid()
        if pid is not None:
            os.kill(pid, signal.SIGCONT)
            os.kill(pid, signal.SIGKILL)
            process.reap(pid)


def process_state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]


def test_service_lifecycle(node):
    service = node()
    assert not service.uses_systemd()
    assert service.status() == (False, "not running")

    started = service.start(wait=20)
    pid = service.pid()
    assert pid is not None and started == f"started pid {pid}"
    assert service.pidfile == node.config.parent / "dynamod.pid"
    assert service.pidfile.read_text() == f"{pid}\n"
    assert fetch_status(node.http)["node"] == "solo"
    assert service.status() == (True, f"running pid {pid}")
    assert service.start(wait=20) == f"already running pid {pid}"
    assert service.output_path() == node.config.parent / "logs" / "stderr.log"
    assert service.output_path().exists()

    assert service.signal(signal.SIGSTOP, "paused") == f"paused pid {pid}"
    assert wait_until(lambda: process_state(pid) == "T", 5.0, interval=0.01)
    assert service.status() == (True, f"running pid {pid} (not answering /admin/status)")
    assert service.signal(signal.SIGCONT, "resumed") == f"resumed pid {pid}"
    assert wait_until(lambda: fetch_status(node.http) is not None, 5.0, interval=0.01)
    assert service.status() == (True, f"running pid {pid}")

    assert service.stop() == "stopped"
    assert not process.is_dynamod(pid, str(service.config))
    assert not service.pidfile.exists()
    assert service.status() == (False, "not running")
    assert service.signal(signal.SIGKILL, "killed") == "not running"
    assert service.signal(signal.SIGSTOP, "paused") == "not running"
    assert service.stop() == "not running"


def test_a_killed_node_leaves_a_stale_pidfile_that_start_ignores(node):
    service = node()
    service.start(wait=20)
    first = service.pid()
    assert service.signal(signal.SIGKILL, "killed") == f"killed pid {first}"
    assert not process.is_dynamod(first, str(service.config))
    assert service.pidfile.exists()
    assert service.status() == (False, "not running")
    assert service.start(wait=20).startswith("started pid ")
    assert service.pid() not in (None, first)
    assert service.stop() == "stopped"


def test_a_paused_node_is_stopped_cleanly(node):
    service = node()
    service.start(wait=20)
    pid = service.pid()
    service.signal(signal.SIGSTOP, "paused")
    assert wait_until(lambda: process_state(pid) == "T", 5.0, interval=0.01)
    assert service.stop() == "stopped"
    assert service.pid() is None


def test_a_missing_config_is_a_service_error(tmp_path: Path):
    with pytest.raises(ServiceError, match=f"^no config at {re.escape(str(tmp_path / 'absent.toml'))}$"):
        Service.from_config(str(tmp_path / "absent.toml"))


def test_an_invalid_config_fails_start_without_starting_anything(node):
    node.config.write_text(node.config.read_text().replace("r = 1\n", "r = 5\n"))
    service = node()
    with pytest.raises(ServiceError, match="r must be between 1 and n=1, got 5"):
        service.start(wait=5)
    assert not service.pidfile.exists()


def test_a_config_with_an_unknown_key_fails_start(node):
    node.config.write_text(node.config.read_text() + 'colour = "blue"\n')
    with pytest.raises(ServiceError, match="unknown configuration key.*colour"):
        node().start(wait=5)


def test_a_node_that_dies_at_start_up_shows_its_output(node):
    config = tomllib.loads(node.config.read_text())
    host, port = config["peer"].rsplit(":", 1)
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind((host, int(port)))
        squatter.listen()
        service = node()
        with pytest.raises(ServiceError) as caught:
            service.start(wait=20)
    message = str(caught.value)
    assert message.startswith(f"solo exited during start-up; last lines of {service.output_path()}:\n")
    assert "Address already in use" in message
    assert service.pid() is None


# -- the CLI -------------------------------------------------------------------------------------


def invoke_cli(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_cli_service_commands(node):
    config = str(node.config)
    node()  # the fixture kills whatever runs with this config after the test
    started = invoke_cli("--format", "json", "service", "start", "--config", config, "--wait", "20")
    assert started.exit_code == 0, started.output
    document = json.loads(started.stdout)
    assert document["ok"] is True and document["config"] == config
    assert re.fullmatch(r"started pid \d+", document["result"])

    status = invoke_cli("service", "status", "--config", config)
    assert status.exit_code == 0 and status.stdout.startswith("running pid ")
    stopped = invoke_cli("service", "stop", "--config", config)
    assert (stopped.exit_code, stopped.stdout) == (0, "stopped\n")
    status = invoke_cli("--format", "json", "service", "status", "--config", config)
    assert status.exit_code == 1
    assert json.loads(status.stdout) == {"ok": False, "result": "not running", "config": config}


def test_cli_service_with_a_missing_config_is_a_usage_error(tmp_path: Path):
    outcome = invoke_cli("--format", "json", "service", "status", "--config", str(tmp_path / "nope.toml"))
    assert outcome.exit_code == 2
    assert json.loads(outcome.stdout) == {"error": f"no config at {tmp_path / 'nope.toml'}"}


def test_cli_start_of_a_node_that_dies_exits_1(node):
    config = tomllib.loads(node.config.read_text())
    host, port = config["http"].rsplit(":", 1)
    node()  # cleaned up by the fixture should it run after all
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind((host, int(port)))
        squatter.listen()
        outcome = invoke_cli("service", "start", "--config", str(node.config), "--wait", "20")
    assert outcome.exit_code == 1
    assert "exited during start-up" in outcome.stderr


def test_the_deploy_commands_drive_a_node_rendered_from_the_inventory(tmp_path: Path):
    """node.toml from render_node_toml and the argv of service_command, run through dynactl's CLI:
    what deploy does on a host, minus SSH and pip."""
    http, peer = two_free_ports()
    target = host("solo", ansible_host="127.0.0.1", dynamod_home=str(tmp_path / "home dir"),
                  dynamod_data_dir=str(tmp_path / "data"), dynamod_log_dir=str(tmp_path / "logs"),
                  dynamod_http_port=http, dynamod_peer_port=peer, dynamod_n=1, dynamod_r=1, dynamod_w=1,
                  dynamod_partitions=8, dynamod_sync=False)
    Path(target.home).mkdir()
    Path(target.config_path).write_text(render_node_toml(target, [target]))
    service = Service.from_config(target.config_path, unit=NO_UNIT)

    def run(action: str):
        words = argv(service_command(target, action, wait=20))
        assert words[0] == f"{target.venv}/bin/dynactl"
        return invoke_cli(*words[1:])

    try:
        assert run("status").exit_code == 1
        started = run("start")
        assert started.exit_code == 0, started.output
        assert fetch_status(f"127.0.0.1:{http}")["node"] == "solo"
        assert run("status").exit_code == 0
        restarted = run("restart")
        assert restarted.exit_code == 0 and restarted.stdout.startswith("started pid ")
        assert run("stop").stdout == "stopped\n"
        assert run("status").exit_code == 1
    finally:
        pid = service.pid()
        if pid is not None:
            os.kill(pid, signal.SIGCONT)
            os.kill(pid, signal.SIGKILL)
            process.reap(pid)


def test_dynactl_service_status_exits_1_when_not_running(node):
    outcome = subprocess.run([str(DYNACTL), "service", "status", "--config", str(node.config)],
                             capture_output=True, text=True, timeout=60, cwd=REPO)
    assert (outcome.returncode, outcome.stdout) == (1, "not running\n"), outcome.stderr


def test_dynactl_deploy_with_a_missing_inventory_exits_2_with_json_error(tmp_path: Path):
    outcome = subprocess.run([str(DYNACTL), "--format", "json", "deploy", "--inventory", "/nonexistent"],
                             capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert outcome.returncode == 2, outcome.stderr
    assert json.loads(outcome.stdout) == {"error": "inventory /nonexistent does not exist"}
    assert outcome.stderr == "dynactl: inventory /nonexistent does not exist\n"
