"""dynactl deploy on systemd hosts: the unit is the Ansible role's (one template for both tools,
rendered from the host's variables), installed only when it differs, enabled, run as the service
user (created as the role creates it), and a node the pidfile fallback runs is moved to the unit
one host at a time. No host is contacted: ``FakeHost`` answers deploy's commands from a model of
a host (files, accounts, what runs the node) and records them."""

from __future__ import annotations

import fnmatch
import hashlib
import os
import re
import shlex
import tomllib
from importlib import resources
from pathlib import Path

import invoke
import jinja2
import pytest
import yaml

from dynactl import deploy as deploy_module
from dynactl.deploy import (
    SERVICE_DEFAULTS,
    UNIT_MANAGED,
    UNIT_PATH,
    UNIT_TEMPLATE,
    DeployError,
    deploy,
    install,
    render_unit,
    service_command,
    wants_unit,
)
from dynactl.inventory import Host
from dynactl.remote import Hosts

REPO = Path(__file__).resolve().parents[2]
ROLE = REPO / "ansible" / "roles" / "dynamod"
ROLE_TEMPLATE = ROLE / "templates" / "dynamod.service.j2"
PYTHON = "/usr/bin/python3"

# -- one template for both tools ---------------------------------------------------------------


def test_the_role_and_deploy_read_the_same_template_file():
    assert ROLE_TEMPLATE.is_symlink() and not Path(ROLE_TEMPLATE.readlink()).is_absolute()  # survives a copy
    assert ROLE_TEMPLATE.resolve() == Path(str(UNIT_TEMPLATE)).resolve()
    tasks = yaml.safe_load((ROLE / "tasks" / "service.yml").read_text())
    [unit_task] = [task for task in tasks if task.get("name") == "Install the systemd unit"]
    assert unit_task["ansible.builtin.template"]["src"] == "dynamod.service.j2"


def test_the_template_ships_in_the_dynactl_package():
    package_data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    relative = Path(str(UNIT_TEMPLATE)).relative_to(Path(str(resources.files("dynactl")))).as_posix()
    assert any(fnmatch.fnmatch(relative, pattern) for pattern in package_data["dynactl"])
    assert UNIT_TEMPLATE.is_file()  # found through the package (importlib.resources), installed or editable


def test_deploy_defaults_the_service_variables_as_the_role_does():
    defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    assert SERVICE_DEFAULTS == {name: defaults[name] for name in SERVICE_DEFAULTS}


def ansible_variables(**overrides) -> dict:
    """The variables the role's template task sees: the role's defaults (their own templates
    resolved, as Ansible does) under the host's ``overrides``."""
    # Ansible's own variables that some defaults read (not the unit).
    magic = {"playbook_dir": str(REPO / "ansible"), "ansible_playbook_python": PYTHON, "groups": {}}
    variables = {**magic, **yaml.safe_load((ROLE / "defaults" / "main.yml").read_text()), **overrides}
    environment = jinja2.Environment()
    environment.filters["dirname"] = os.path.dirname  # Ansible's, in dynamod_source's default
    for _ in range(3):  # defaults refer to defaults (dynamod_venv: "{{ dynamod_home }}/venv")
        variables = {name: environment.from_string(value).render(variables) if isinstance(value, str) else value
                     for name, value in variables.items()}
    return variables


def ansible_render(variables: dict) -> str:
    """The template as Ansible's template module renders it (trim_blocks, trailing newline kept)."""
    environment = jinja2.Environment(trim_blocks=True, keep_trailing_newline=True, undefined=jinja2.StrictUndefined)
    return environment.from_string(ROLE_TEMPLATE.read_text()).render(variables)


LAYOUT = {"dynamod_home": "/srv/dyn", "dynamod_data_dir": "/data/dyn", "dynamod_log_dir": "/logs/dyn"}


@pytest.mark.parametrize("account", [{"dynamod_user": "dynamod"},
                                     {"dynamod_user": "kv", "dynamod_group": "storage"}],
                         ids=["role-default-user", "own-user-and-group"])
@pytest.mark.parametrize("layout", [{}, LAYOUT], ids=["default-layout", "own-layout"])
def test_the_unit_deploy_renders_is_the_one_the_role_installs(account, layout):
    host = Host(name="h1", address="10.0.0.1", vars={**layout, **account})
    expected = ansible_render(ansible_variables(inventory_hostname="h1", ansible_managed=UNIT_MANAGED,
                                                **layout, **account))
    assert render_unit(host) == expected
    assert f"User={account['dynamod_user']}\n" in expected and "Description=dynamod node h1 " in expected


def test_without_a_service_user_the_unit_runs_the_node_as_the_roles_default_user():
    """An Ansible inventory rarely names dynamod_user (the role's default applies): deploy over a
    cluster the role made must keep its unit's user."""
    host = Host(name="h2", address="10.0.0.2", vars=LAYOUT)
    unit = render_unit(host)
    assert unit == ansible_render(ansible_variables(inventory_hostname="h2", ansible_managed=UNIT_MANAGED, **LAYOUT))
    assert "User=dynamod\n" in unit and "Group=dynamod\n" in unit


def test_an_empty_service_user_names_none_and_the_node_runs_as_root():
    host = Host(name="h2", address="10.0.0.2", vars={**LAYOUT, "dynamod_user": ""})
    unit = render_unit(host)
    assert unit == ansible_render(ansible_variables(inventory_hostname="h2", ansible_managed=UNIT_MANAGED,
                                                    **LAYOUT, dynamod_user=""))
    assert "User=" not in unit and "Group=" not in unit
    assert "ExecStart=/srv/dyn/venv/bin/dynamod --config /srv/dyn/node.toml\n" in unit
    assert "ReadWritePaths=/data/dyn /logs/dyn\n" in unit
    assert unit.startswith(f"# {UNIT_MANAGED}\n[Unit]\n") and unit.endswith("WantedBy=multi-user.target\n")


def test_ansibles_own_templating_renders_the_template_as_the_tests_do():
    """Pins ``ansible_render``'s settings to Ansible's template module (2.19's API; skipped before it)."""
    templating = pytest.importorskip("ansible.template")
    if not hasattr(templating, "trust_as_template"):
        pytest.skip("ansible-core before 2.19")
    from ansible.parsing.dataloader import DataLoader

    loader = DataLoader()
    defaults = loader.load_from_file(str(ROLE / "defaults" / "main.yml"), trusted_as_template=True)
    variables = {**defaults, "inventory_hostname": "h1", "ansible_managed": "Ansible managed"}
    templar = templating.Templar(loader=loader, variables=variables)
    rendered = templar.template(templating.trust_as_template(ROLE_TEMPLATE.read_text()), escape_backslashes=False,
                                overrides={"trim_blocks": True, "lstrip_blocks": False})
    assert rendered == ansible_render(ansible_variables(inventory_hostname="h1", ansible_managed="Ansible managed"))


# -- a host, as deploy's commands see it ---------------------------------------------------------


class FakeHost:
    """A host deploy talks to: ``run`` and ``put`` answer from its files, accounts, whether systemd
    booted it, and what runs its node (``"fallback"``, ``"systemd"`` or None), as ``dynactl
    service`` would (systemd once the unit file exists). Every command goes to ``log``."""

    def __init__(self, name: str, log: list[tuple[str, str]], systemd: bool = True, node: str | None = None,
                 users: tuple[str, ...] = (), files: dict[str, str] | None = None, unit_start_fails: bool = False):
        self.name, self.log, self.systemd, self.node = name, log, systemd, node
        self.users, self.groups = set(users), set(users)
        self.files = {PYTHON: "", **(files or {})}
        self.enabled = False
        self.cwd = "/root"
        self.unit_start_fails = unit_start_fails

    @property
    def commands(self) -> list[str]:
        return [command for host, command in self.log if host == self.name]

    def uses_systemd(self) -> bool:
        return self.systemd and UNIT_PATH in self.files

    def put(self, local: str, remote: str) -> None:
        self.log.append((self.name, f"put {remote}"))
        self.files[remote] = Path(local).read_text()

    def run(self, command: str, **_options) -> invoke.Result:
        self.log.append((self.name, command))
        exited, stdout = self.shell(command)
        return invoke.Result(stdout=stdout, stderr="" if exited == 0 else "refused", exited=exited, command=command)

    def shell(self, command: str) -> tuple[int, str]:
        """The little shell deploy's commands need: ``;``, ``&&``, ``||`` and ``cd``."""
        exited, output = 0, ""
        for sequence in command.split("; "):
            exited, output = 0, ""
            for step in sequence.split(" && "):
                for alternative in step.split(" || "):
                    exited, said = self.answer(alternative)
                    if exited == 0:
                        break
                if exited != 0:
                    break
                output += said
        return exited, output

    def answer(self, command: str) -> tuple[int, str]:
        words = shlex.split(command)
        service = re.search(r"/bin/dynactl service (\w+) ", command)
        if service:
            return self.service(service.group(1))
        if words[0] == "cd":
            self.cwd = words[1]
            return 0, ""
        if words[0] == "sha256sum":
            return 0, "".join(f"{hashlib.sha256(text.encode()).hexdigest()}  {Path(path).name}\n"
                              for path, text in self.files.items() if Path(path).parent == Path(self.cwd))
        if words[:2] == ["test", "-d"]:
            return (0 if self.systemd and words[2] == "/run/systemd/system" else 1), ""
        if words[0] == "test":
            return (0 if words[2] in self.files else 1), ""
        if words[0] == "cat":
            return (0, self.files[words[1]]) if words[1] in self.files else (1, "")
        if words[:2] == ["getent", "passwd"]:
            return (0 if words[2] in self.users else 2), ""
        if words[:2] == ["getent", "group"]:
            return (0 if words[2] in self.groups else 2), ""
        if words[0] == "groupadd":
            self.groups.add(words[-1])
            return 0, ""
        if words[0] == "useradd":
            assert words[words.index("--gid") + 1] in self.groups
            self.users.add(words[-1])
            return 0, ""
        if len(words) > 2 and words[1:3] == ["-m", "venv"]:
            self.files[f"{words[3]}/bin/python"] = ""
            return 0, ""
        if words[:2] == ["systemctl", "is-enabled"]:
            return (0 if self.enabled else 1), ""
        if words[0] == "systemctl" and words[1] in ("enable", "disable"):
            self.enabled = words[1] == "enable"
            return 0, ""
        if words[:2] == ["rm", "-f"]:
            for path in words[2:]:
                self.files.pop(path, None)
        return 0, ""

    def service(self, action: str) -> tuple[int, str]:
        """``dynactl service ACTION`` on this host: it drives systemd once the unit file exists."""
        manager = "systemd" if self.uses_systemd() else "fallback"
        if action == "status":
            return (0, "running pid 7\n") if self.node == manager else (1, "not running\n")
        if action in ("stop", "restart") and self.node == manager:
            self.node = None
        if action in ("start", "restart"):
            if self.node is not None:
                assert self.node == manager, f"{self.name}: a {manager} start beside the node {self.node} runs"
                return 0, "already running pid 7\n"
            if manager == "systemd" and self.unit_start_fails:
                return 1, ""
            self.node = manager
            return 0, "started pid 8\n"
        return 0, "stopped\n"


class FakeHosts(Hosts):
    """``Hosts`` whose connections are ``FakeHost`` objects."""

    def __init__(self, fakes: dict[str, FakeHost], hosts: list[Host]):
        super().__init__(hosts)
        self.fakes = fakes

    def connection(self, host: Host) -> FakeHost:
        return self.fakes[host.name]


def a_host(name: str = "h1", **variables) -> Host:
    return Host(name=name, address="10.0.0.1", vars={"dynamod_user": "dynamod", **variables})


@pytest.fixture
def wheelhouse(tmp_path: Path) -> dict:
    wheel = tmp_path / "dynamo_toolkit-0.1.0-py3-none-any.whl"
    wheel.write_text("the project")
    return {"dir": str(tmp_path), "wheel": str(wheel), "wheels": [wheel.name]}


def unit_commands(fake: FakeHost) -> list[str]:
    """What ``fake`` was asked about its unit and its accounts."""
    return [command for command in fake.commands
            if UNIT_PATH in command or "systemctl" in command or command.split()[0] in ("getent", "useradd")]


def test_a_fresh_systemd_host_gets_the_user_the_unit_and_the_unit_enabled(wheelhouse):
    host, fake = a_host(), FakeHost("h1", [])
    changes = install(fake, host, wheelhouse, [host])
    path = shlex.quote(UNIT_PATH)
    assert unit_commands(fake) == [
        "getent passwd dynamod",
        "getent group dynamod >/dev/null || groupadd --system dynamod",
        "useradd --system --gid dynamod --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin "
        "--comment 'dynamod node' dynamod",
        f"test -e {path}",
        f"cat {path} 2>/dev/null",
        f"put {UNIT_PATH}",
        f"chown root:root {path} && chmod 0644 {path} && systemctl daemon-reload",
        "systemctl is-enabled --quiet dynamod",
        "systemctl enable --quiet dynamod",
    ]
    assert fake.files[UNIT_PATH] == render_unit(host)
    assert changes.startswith("created user dynamod, ") and changes.endswith(", installed unit, enabled unit")
    # The account exists before anything is chowned to it.
    first_chown = next(i for i, command in enumerate(fake.commands) if command.startswith("chown -R dynamod "))
    assert fake.commands.index("getent passwd dynamod") < first_chown


def test_an_unchanged_systemd_host_gets_no_upload_no_daemon_reload_and_no_enable(wheelhouse):
    host, fake = a_host(), FakeHost("h1", [])
    install(fake, host, wheelhouse, [host])
    fake.log.clear()
    assert install(fake, host, wheelhouse, [host]) == "unchanged"
    assert not any(command.startswith("put ") for command in fake.commands)
    assert unit_commands(fake) == ["getent passwd dynamod", f"test -e {shlex.quote(UNIT_PATH)}",
                                   f"cat {shlex.quote(UNIT_PATH)} 2>/dev/null", "systemctl is-enabled --quiet dynamod"]


def test_a_unit_the_role_wrote_is_left_as_it_is(wheelhouse):
    host = a_host()
    by_ansible = ansible_render(ansible_variables(inventory_hostname="h1", ansible_managed="Ansible managed"))
    fake = FakeHost("h1", [], users=("dynamod",), files={UNIT_PATH: by_ansible})
    fake.enabled = True
    assert "unit" not in install(fake, host, wheelhouse, [host])
    assert fake.files[UNIT_PATH] == by_ansible


def test_a_changed_unit_is_rewritten_and_reloaded(wheelhouse):
    host = a_host()
    fake = FakeHost("h1", [], users=("dynamod",), files={UNIT_PATH: render_unit(host).replace("60", "30")})
    fake.enabled = True
    assert install(fake, host, wheelhouse, [host]).endswith(", installed unit")
    assert f"chown root:root {UNIT_PATH} && chmod 0644 {UNIT_PATH} && systemctl daemon-reload" in fake.commands
    assert fake.files[UNIT_PATH] == render_unit(host)


def test_a_host_without_systemd_gets_no_unit_and_no_account(wheelhouse):
    host, fake = a_host(), FakeHost("h1", [], systemd=False)
    assert "unit" not in install(fake, host, wheelhouse, [host])
    assert unit_commands(fake) == []
    assert [command for command in fake.commands if "systemd" in command] == ["test -d /run/systemd/system"]
    assert UNIT_PATH not in fake.files


def test_the_fallback_chosen_on_a_systemd_host_gets_no_unit(wheelhouse):
    host, fake = a_host(dynamod_service_manager="dynactl"), FakeHost("h1", [])
    install(fake, host, wheelhouse, [host])
    assert unit_commands(fake) == [] and UNIT_PATH not in fake.files
    with pytest.raises(DeployError, match="dynamod_service_manager must be auto, systemd or dynactl"):
        wants_unit(fake.run, a_host(dynamod_service_manager="upstart"))


def test_without_a_service_user_the_roles_default_user_is_made_and_owns_the_data(wheelhouse):
    host, fake = Host(name="h1", address="10.0.0.1"), FakeHost("h1", [])
    assert "created user dynamod" in install(fake, host, wheelhouse, [host])
    assert "User=dynamod\n" in fake.files[UNIT_PATH]
    assert any(command.startswith("chown -R dynamod ") for command in fake.commands)


def test_an_empty_service_user_makes_no_account(wheelhouse):
    host, fake = Host(name="h1", address="10.0.0.1", vars={"dynamod_user": ""}), FakeHost("h1", [])
    assert install(fake, host, wheelhouse, [host]).endswith(", installed unit, enabled unit")
    assert not [command for command in fake.commands
                if command.split()[0] in ("getent", "useradd") or command.startswith("chown -R")]
    assert "User=" not in fake.files[UNIT_PATH]


def test_dynamod_service_enabled_false_leaves_the_unit_disabled(wheelhouse):
    fake = FakeHost("h1", [])
    changes = install(fake, a_host(dynamod_service_enabled="false"), wheelhouse, [a_host()])
    assert changes.endswith(", installed unit") and not fake.enabled
    fake.enabled = True  # enabled by hand: the role's "enabled: false" disables it, and so does deploy
    assert install(fake, a_host(dynamod_service_enabled=False), wheelhouse, [a_host()]) == "disabled unit"


# -- deploy: start, restart, and the switch from the fallback -------------------------------------


@pytest.fixture
def healthy(monkeypatch) -> list[str]:
    """Every health wait passes at once; returns the hosts waited on, in order."""
    waited: list[str] = []
    monkeypatch.setattr(deploy_module, "wait_healthy", lambda host, *_args, **_kw: waited.append(host.name))
    return waited


def run_deploy(fakes: dict[str, FakeHost], wheelhouse: dict) -> dict:
    hosts = [a_host(name) for name in fakes]
    return deploy(FakeHosts(fakes, hosts), hosts, wheelhouse)


def test_deploy_starts_a_stopped_node_of_a_fresh_systemd_host_through_the_unit(wheelhouse, healthy):
    log: list[tuple[str, str]] = []
    fake = FakeHost("h1", log)
    results = run_deploy({"h1": fake}, wheelhouse)
    assert results["h1"].ok and results["h1"].stdout.endswith("installed unit, enabled unit; started pid 8")
    assert fake.node == "systemd"
    assert fake.commands.index(f"put {UNIT_PATH}") < fake.commands.index(service_command(a_host(), "start"))


def test_a_node_the_fallback_runs_is_stopped_before_the_unit_is_written_then_started_by_systemd(wheelhouse,
                                                                                               healthy):
    log: list[tuple[str, str]] = []
    fakes = {name: FakeHost(name, log, node="fallback", users=("dynamod",)) for name in ("h1", "h2")}
    results = run_deploy(fakes, wheelhouse)
    for name, fake in fakes.items():
        assert results[name].ok, results[name]
        assert "unit waits until the fallback's node stops; switched to the unit: installed unit, enabled unit, " \
               "started pid 8" in results[name].stdout
        assert fake.node == "systemd" and fake.enabled
    # Per host: the fallback's stop, then the unit, then systemd's start; the FakeHost refuses a
    # start beside a running node, so the node never ran twice.
    stop, start = service_command(a_host(), "stop"), service_command(a_host(), "start")
    h1 = fakes["h1"].commands
    assert h1.index(stop) < h1.index(f"put {UNIT_PATH}") < h1.index(start)
    # One host at a time: h2's node is stopped only once h1's runs again under systemd.
    assert log.index(("h1", start)) < log.index(("h2", stop))
    assert healthy == ["h1", "h1", "h2", "h2"]  # before and after each switch


def test_a_switch_whose_systemd_start_fails_puts_the_node_back_under_the_fallback(wheelhouse, healthy):
    log: list[tuple[str, str]] = []
    fakes = {"h1": FakeHost("h1", log, node="fallback", users=("dynamod",), unit_start_fails=True),
             "h2": FakeHost("h2", log, node="fallback", users=("dynamod",))}
    results = run_deploy(fakes, wheelhouse)
    assert not results["h1"].ok
    assert "dynactl service start under systemd failed" in results["h1"].error
    assert results["h1"].error.endswith("the node runs under the fallback again")
    assert fakes["h1"].node == "fallback" and UNIT_PATH not in fakes["h1"].files
    assert results["h2"].error == "not restarted: h1 did not come back" and fakes["h2"].node == "fallback"


def test_a_host_without_systemd_is_deployed_as_before(wheelhouse, healthy):
    log: list[tuple[str, str]] = []
    fakes = {"h1": FakeHost("h1", log, systemd=False, node="fallback"), "h2": FakeHost("h2", log, systemd=False)}
    results = run_deploy(fakes, wheelhouse)
    assert results["h1"].stdout.endswith("; restarted") and results["h2"].stdout.endswith("; started pid 8")
    assert all(UNIT_PATH not in command and "systemctl" not in command for _, command in log)
    assert fakes["h1"].node == fakes["h2"].node == "fallback"
