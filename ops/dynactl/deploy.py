"""Deploy and run dynamod on hosts over SSH (Fabric): install, configure, start, restart in turn.

A host's layout is the Ansible role's (``ansible/roles/dynamod``): ``HOME/wheels`` (uploaded from
the controller's wheelhouse), ``HOME/venv``, ``HOME/node.toml``, data and log directories, and
``HOME/venv/bin/dynactl service ...`` to start and stop the node, so hosts provisioned by either
tool can be driven by both. A host booted with systemd also gets the role's unit (one template,
``templates/dynamod.service.j2``, for both tools), installed and enabled, so its node comes back
after a reboot.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import tempfile
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import attrs
import jinja2

from dynactl import certs
from dynactl.credentials import host_credentials
from dynactl.inventory import Host
from dynactl.package import DISTRIBUTION, WHEEL_PREFIX
from dynactl.remote import HostError, HostResult, Hosts
from dynactl.service import SYSTEMD_UNIT_DIR
from dynamod.client import ClientError, Credentials, DynamoClient, NodeUnavailable
from dynamod.polling import wait_until
from dynamod.security.identity import Role

HEALTH_DEADLINE_SECONDS = 120.0
#: The unit's template: deploy renders it, and the Ansible role's templates/ links to it.
UNIT_TEMPLATE = resources.files("dynactl") / "templates" / "dynamod.service.j2"
UNIT = "dynamod"
UNIT_PATH = str(SYSTEMD_UNIT_DIR / f"{UNIT}.service")
#: What the unit's first line says (the role writes its ``ansible_managed`` there).
UNIT_MANAGED = "Managed by dynactl deploy (the Ansible role dynamod's template): local changes are overwritten"
#: The role's defaults for what the inventory's defaults do not name.
#: ``dynamod_user`` is who a unit runs the node as when the inventory names nobody (``unit_host``).
SERVICE_DEFAULTS: dict[str, Any] = {"dynamod_service_manager": "auto", "dynamod_service_enabled": True,
                                    "dynamod_user": "dynamod"}


class DeployError(HostError):
    """A step failed on a host; the message names the step."""


def founders(host: Host, hosts: list[Host]) -> list[Host]:
    """The members a node lists in its config: the founding hosts (``dynamod_founders``, default
    every host deployed together); a host outside them starts alone and joins later."""
    names = host.var("dynamod_founders")
    if isinstance(names, str):  # an INI inventory gives "h1,h2,h3"
        names = [name.strip() for name in names.split(",") if name.strip()]
    chosen = [h for h in hosts if h.name in names] if names else hosts
    return chosen if host.name in {h.name for h in chosen} else [host]


def render_node_toml(host: Host, members: list[Host]) -> str:
    """The node.toml of ``host``: the keys the role's template writes, from the same variables."""
    def toml_value(value: Any) -> str:
        if isinstance(value, bool):
            return str(value).lower()
        if isinstance(value, (int, float)):
            return str(value)
        # A JSON string is a TOML basic string, once non-BMP characters stay literal (no surrogate
        # escapes) and DEL, which TOML wants escaped, is.
        return json.dumps(str(value), ensure_ascii=False).replace("\x7f", "\\u007f")

    bind = host.var("dynamod_bind_address") or host.var("dynamod_address") or host.address
    settings = {
        "node_id": host.name,
        "http": f"{bind}:{int(host.var('dynamod_http_port'))}",
        "peer": f"{bind}:{int(host.var('dynamod_peer_port'))}",
        "data_dir": str(host.var("dynamod_data_dir")),
        "log_file": f"{host.var('dynamod_log_dir')}/dynamod.log",
        "log_level": str(host.var("dynamod_log_level")),
        "n": int(host.var("dynamod_n")), "r": int(host.var("dynamod_r")), "w": int(host.var("dynamod_w")),
        "partitions": int(host.var("dynamod_partitions")),
        "mode": str(host.var("dynamod_mode")),
        "sync": bool(host.var("dynamod_sync")),
        **tls_settings(host),
        **dict(sorted((host.var("dynamod_extra_config") or {}).items())),
    }
    lines = ["# Written by dynactl deploy.", *(f"{key} = {toml_value(value)}" for key, value in settings.items())]
    for member in members:
        lines += ["", "[[members]]", f"id = {toml_value(member.name)}", f"peer = {toml_value(member.peer)}",
                  f"http = {toml_value(member.http)}"]
    return "\n".join(lines) + "\n"


def _flag(host: Host, name: str) -> bool:
    """A boolean variable of the role (an INI inventory may give it as text)."""
    value = host.var(name)
    if value is None:
        value = SERVICE_DEFAULTS.get(name, False)
    return value.strip().lower() in ("true", "yes", "1") if isinstance(value, str) else bool(value)


def uses_tls(host: Host) -> bool:
    """``dynamod_tls``, the role's variable."""
    return _flag(host, "dynamod_tls")


def tls_home(host: Host) -> str:
    """Where a host keeps its node's TLS files (the role's ``dynamod_tls_home``)."""
    return f"{host.home}/tls"


def tls_settings(host: Host) -> dict[str, str]:
    """node.toml's TLS settings for ``host`` (none unless ``dynamod_tls``), as the role writes them."""
    if not uses_tls(host):
        return {}
    home = tls_home(host)
    settings = {"tls_cert": f"{home}/node.pem", "tls_key": f"{home}/node.key", "tls_ca": f"{home}/ca.pem"}
    if host.var("dynamod_auth_tokens_file"):
        settings["auth_tokens"] = f"{home}/tokens"
    return settings


def tls_files(host: Host) -> list[tuple[Path, str, str]]:
    """(file on the controller, path on the host, mode) of the node's TLS files, issuing what is
    missing from the CA in ``dynamod_tls_dir`` (made when missing, like the role does): the node's
    certificate names its address. ``ca.key`` stays on the controller."""
    directory = Path(str(host.var("dynamod_tls_dir")))
    try:
        ca_cert = certs.ensure_ca(directory)
        node_cert = directory / "nodes" / f"{host.name}.pem"
        if not node_cert.exists():
            certs.issue_node(directory, host.name, [str(host.var("dynamod_address") or host.address)])
    except certs.CertsError as exc:
        raise DeployError(f"certificates in {directory}: {exc}") from None
    home = tls_home(host)
    files = [(ca_cert, f"{home}/ca.pem", "0644"), (node_cert, f"{home}/node.pem", "0644"),
             (directory / "nodes" / f"{host.name}.key", f"{home}/node.key", "0600")]
    if host.var("dynamod_auth_tokens_file"):
        files.append((Path(str(host.var("dynamod_auth_tokens_file"))), f"{home}/tokens", "0600"))
    return files


#: The admin client certificate dynactl deploy checks a TLS host's health with (controller only).
DEPLOY_CLIENT = "dynactl-deploy"


def controller_credentials(host: Host) -> Credentials | None:
    """For a ``dynamod_tls`` host: an admin client certificate of ``dynamod_tls_dir`` (issued when
    missing) and the CA, which the health checks use; None for a plain host."""
    if not uses_tls(host):
        return None
    directory = Path(str(host.var("dynamod_tls_dir")))
    client = directory / "clients" / f"{DEPLOY_CLIENT}.pem"
    try:
        ca_cert = certs.ensure_ca(directory)
        if not client.exists():
            certs.issue_client(directory, DEPLOY_CLIENT, Role.ADMIN)
    except certs.CertsError as exc:
        raise DeployError(f"certificates in {directory}: {exc}") from None
    return Credentials(ca=str(ca_cert), cert=str(client),
                       key=str(directory / "clients" / f"{DEPLOY_CLIENT}.key"))


def install_tls(connection: Any, host: Host) -> bool:
    """Put the node's TLS files on ``host`` (keys 0600, the service user's); True if any changed."""
    run = _runner(connection)
    home = shlex.quote(tls_home(host))
    _check(run(f"mkdir -p {home} && chmod 0755 {home}"), "creating the TLS directory")
    changed = False
    for local, remote, mode in tls_files(host):
        target = shlex.quote(remote)
        present = run(f"sha256sum -- {target} 2>/dev/null").stdout.partition(" ")[0]
        if present != _sha256(local):
            # umask 077 first: a key is never readable by others, not even while it is written.
            _check(run(f"umask 077 && : > {target}"), f"preparing {remote}")
            connection.put(str(local), remote)
            changed = True
        owner = host.var("dynamod_user") if mode == "0600" else None
        _check(run(f"chmod {mode} {target}" + (f" && chown {shlex.quote(str(owner))} {target}" if owner else "")),
               f"mode of {remote}")
    return changed


def service_command(host: Host, action: str, wait: float = 60.0) -> str:
    """The shell command that runs ``dynactl service ACTION`` for the node on ``host``."""
    argv = [f"{host.venv}/bin/dynactl", "service", action, "--config", host.config_path, "--wait", f"{wait:g}"]
    if host.var("dynamod_user"):
        argv += ["--user", str(host.var("dynamod_user"))]
    if action in ("start", "restart") and host.var("dynamod_faketime_file"):
        argv += ["--faketime", str(host.var("dynamod_faketime_file"))]
    return shlex.join(argv)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _runner(connection: Any) -> Callable[..., Any]:
    """``connection.run`` as every step calls it: output captured, a failure returned, not raised."""
    return lambda command, **kw: connection.run(command, hide=True, warn=True, in_stream=False, **kw)


def _upload_text(connection: Any, text: str, remote: str) -> None:
    with tempfile.NamedTemporaryFile("w", suffix=Path(remote).suffix) as draft:
        draft.write(text)
        draft.flush()
        connection.put(draft.name, remote)


def _last_line(result: Any) -> str:
    return (result.stderr.strip() or result.stdout.strip() or "no output").splitlines()[-1]


def _check(result: Any, step: str) -> Any:
    if result.exited != 0:
        raise DeployError(f"{step} failed (exit {result.exited}): {_last_line(result)}")
    return result


def install(connection: Any, host: Host, wheelhouse: dict[str, Any], members: list[Host]) -> str:
    """Put the wheels, the venv, the project and node.toml on one host, and on a systemd host the
    service user and the unit (``install_unit``); returns what changed."""
    run = _runner(connection)
    python = shlex.quote(host.python)
    if run(f"test -x {python}").exited != 0:
        raise DeployError(f"no Python at {host.python} (install python3 and python3-venv, or set "
                          "ansible_python_interpreter)")
    systemd = wants_unit(run, host)
    if systemd:
        host = unit_host(host)
    changes = ensure_account(run, host) if systemd else []
    home, wheels = host.home, f"{host.home}/wheels"
    directories = [home, wheels, str(host.var("dynamod_data_dir")), str(host.var("dynamod_log_dir"))]
    _check(run("mkdir -p " + " ".join(map(shlex.quote, directories))), "creating directories")
    if host.var("dynamod_user"):
        owned = " ".join(map(shlex.quote, directories[2:]))
        _check(run(f"chown -R {shlex.quote(str(host.var('dynamod_user')))} {owned}"), "chown of data and logs")
    present = {}
    listing = run(f"cd {shlex.quote(wheels)} && sha256sum -- *.whl 2>/dev/null")
    for line in listing.stdout.splitlines():
        digest, _, name = line.partition("  ")
        present[name.strip()] = digest
    local = Path(wheelhouse["dir"])
    uploaded = [wheel for wheel in wheelhouse["wheels"] if present.get(wheel) != _sha256(local / wheel)]
    for wheel in uploaded:
        connection.put(str(local / wheel), f"{wheels}/{wheel}")
    if uploaded:
        changes.append(f"uploaded {len(uploaded)} wheel(s)")
    project_changed = any(wheel.startswith(WHEEL_PREFIX) for wheel in uploaded)
    stale = [name for name in present if name not in wheelhouse["wheels"]]
    if stale:
        run("cd " + shlex.quote(wheels) + " && rm -f -- " + " ".join(map(shlex.quote, stale)))
    venv = shlex.quote(host.venv)
    if run(f"test -x {venv}/bin/python").exited != 0:
        _check(run(f"{python} -m venv {venv}"), f"{host.python} -m venv (is python3-venv installed?)")
        changes.append("venv")
        project_changed = True
    pip = f"{venv}/bin/pip install --quiet --disable-pip-version-check --no-index --find-links {shlex.quote(wheels)}"
    project_wheel = shlex.quote(f"{wheels}/{Path(wheelhouse['wheel']).name}")
    if project_changed:
        _check(run(f"{pip} {project_wheel} && {pip} --force-reinstall --no-deps {project_wheel}", timeout=600),
               "pip install")
        changes.append(f"installed {DISTRIBUTION}")
    if uses_tls(host) and install_tls(connection, host):
        changes.append("TLS files")
    config = render_node_toml(host, members)
    current = run(f"cat {shlex.quote(host.config_path)}").stdout
    if current != config:
        _upload_text(connection, config, host.config_path)
        changes.append("wrote node.toml")
    # Always, not only after an upload: the upload keeps the draft's mode (0600, NamedTemporaryFile's),
    # and a node.toml an earlier deploy left so is unreadable by the service user the node runs as.
    _check(run(config_mode_command(host)), "mode of node.toml")
    if systemd and fallback_runs_node(run, host):
        changes.append("unit waits until the fallback's node stops")  # switch_to_unit, one host at a time
    elif systemd:
        changes += install_unit(connection, host)
    return ", ".join(changes) if changes else "unchanged"


def service_account(host: Host) -> tuple[str, str] | None:
    """(user, group) the node runs as: ``dynamod_user`` and ``dynamod_group`` (default the user's
    name, as in the role); None when no user is named (the node runs as the SSH user)."""
    user = host.var("dynamod_user")
    return (str(user), str(host.var("dynamod_group") or user)) if user else None


def config_mode_command(host: Host) -> str:
    """The shell command giving node.toml the role's ownership: root, group of the service user,
    0640 (the node reads it; nobody else needs to); 0644 when the node runs as the SSH user."""
    path = shlex.quote(host.config_path)
    account = service_account(host)
    if account is None:
        return f"chmod 0644 {path}"
    return f"chown root:{shlex.quote(account[1])} {path} && chmod 0640 {path}"


# -- the systemd unit ------------------------------------------------------------------------------


def wants_unit(run: Callable[..., Any], host: Host) -> bool:
    """Does ``host`` get the unit? ``dynamod_service_manager`` as in the role: ``systemd``, ``dynactl``
    (the fallback), or ``auto``: when the host was booted with systemd (what ``dynactl service``
    looks for too)."""
    manager = host.var("dynamod_service_manager") or SERVICE_DEFAULTS["dynamod_service_manager"]
    if manager not in ("auto", "systemd", "dynactl"):
        raise DeployError(f"dynamod_service_manager must be auto, systemd or dynactl, not {manager!r}")
    return manager == "systemd" or (manager == "auto" and run("test -d /run/systemd/system").exited == 0)


def unit_host(host: Host) -> Host:
    """``host`` as its unit runs the node: as the role's default user when the inventory names
    none (an Ansible inventory rarely does: the role's default applies), so deploy over a cluster
    the role made keeps its unit, its owner and its files. An empty ``dynamod_user`` names no
    user: the unit then runs the node as root."""
    if host.var("dynamod_user") is not None:
        return host
    return attrs.evolve(host, vars={**host.vars, "dynamod_user": SERVICE_DEFAULTS["dynamod_user"]})


def render_unit(host: Host) -> str:
    """The unit of ``host``'s node: the role's template, from the host's variables."""
    account = service_account(unit_host(host))
    variables = {
        "ansible_managed": UNIT_MANAGED, "inventory_hostname": host.name,
        "dynamod_user": account[0] if account else None, "dynamod_group": account[1] if account else None,
        # Where deploy installs them (the Host's layout), which the role's defaults also give.
        "dynamod_venv": host.venv, "dynamod_config": host.config_path,
        "dynamod_data_dir": str(host.var("dynamod_data_dir")), "dynamod_log_dir": str(host.var("dynamod_log_dir")),
    }
    # Ansible's template module renders with trim_blocks and keeps the trailing newline.
    environment = jinja2.Environment(trim_blocks=True, keep_trailing_newline=True, undefined=jinja2.StrictUndefined)
    return environment.from_string(UNIT_TEMPLATE.read_text(encoding="utf-8")).render(variables)


def same_unit(present: str, wanted: str) -> bool:
    """True when the installed unit says what ``wanted`` says, but for its first comment line: a
    unit the role wrote (its ``ansible_managed`` line) is left as it is, since rewriting a comment
    would restart the node for nothing."""
    def body(text: str) -> str:
        first, _, rest = text.partition("\n")
        return rest if first.startswith("#") else text
    return body(present) == body(wanted)


def ensure_account(run: Callable[..., Any], host: Host) -> list[str]:
    """Create the service user when it is missing, as the role does (a system user and group, no
    home, no login shell); an existing account is left alone."""
    account = service_account(host)
    if account is None or run(f"getent passwd {shlex.quote(account[0])}").exited == 0:
        return []
    user, group = map(shlex.quote, account)
    _check(run(f"getent group {group} >/dev/null || groupadd --system {group}"), f"creating group {account[1]}")
    _check(run(f"useradd --system --gid {group} --home-dir /nonexistent --no-create-home "
               f"--shell /usr/sbin/nologin --comment 'dynamod node' {user}"), f"creating user {account[0]}")
    return [f"created user {account[0]}"]


def install_unit(connection: Any, host: Host) -> list[str]:
    """Write the unit when it differs (root:root 0644, then ``systemctl daemon-reload``), and enable
    it or not as ``dynamod_service_enabled`` says (default: enabled, so the node starts at boot).
    Never starts or stops the node: ``dynactl service`` does, through systemctl once the unit exists."""
    run = _runner(connection)
    host = unit_host(host)
    changes = []
    path = shlex.quote(UNIT_PATH)
    unit = render_unit(host)
    if not same_unit(run(f"cat {path} 2>/dev/null").stdout, unit):
        _upload_text(connection, unit, UNIT_PATH)
        _check(run(f"chown root:root {path} && chmod 0644 {path} && systemctl daemon-reload"),
               "installing the unit (systemctl daemon-reload)")
        changes.append("installed unit")
    enabled = run(f"systemctl is-enabled --quiet {UNIT}").exited == 0
    if _flag(host, "dynamod_service_enabled") != enabled:
        action = "disable" if enabled else "enable"
        _check(run(f"systemctl {action} --quiet {UNIT}"), f"systemctl {action} {UNIT}")
        changes.append(f"{action}d unit")
    return changes


def fallback_runs_node(run: Callable[..., Any], host: Host) -> bool:
    """True when the unit is still to be installed and the pidfile fallback of ``dynactl service``
    runs the node: then the unit is written only after that node stopped (``switch_to_unit``), or
    systemd would start a second node beside it."""
    return run(f"test -e {shlex.quote(UNIT_PATH)}").exited != 0 and run(service_command(host, "status")).exited == 0


def switch_to_unit(connection: Any, host: Host) -> str:
    """Move a node from the fallback to systemd: stop it with the fallback (which, with no unit
    file yet, is what ``dynactl service stop`` drives), install the unit, start it with systemd.
    A failure after the stop undoes the switch: the unit goes and the fallback starts the node again."""
    run = _runner(connection)
    _check(run(service_command(host, "stop")), "stopping the node the fallback runs")
    try:
        changes = install_unit(connection, host)
        started = _check(run(service_command(host, "start")), "dynactl service start under systemd")
    except DeployError as exc:
        path = shlex.quote(UNIT_PATH)
        run(f"{service_command(host, 'stop')}; systemctl disable --quiet {UNIT}; rm -f {path}; systemctl daemon-reload")
        back = run(service_command(host, "start"))
        raise DeployError(f"{exc}; " + ("the node runs under the fallback again" if back.exited == 0 else
                                        f"the fallback did not start it either: {_last_line(back)}")) from None
    return ", ".join([*changes, started.stdout.strip()])


def deploy(hosts_control: Hosts, hosts: list[Host], wheelhouse: dict[str, Any],
           inventory_hosts: list[Host] | None = None,
           progress: Callable[[str], None] = lambda message: None) -> dict[str, HostResult]:
    """Install and configure every host in parallel, then start each node that does not run (in
    parallel) and restart, one at a time, each running node whose software or config changed:
    restarting them together would take the whole cluster down at once. Before and after each
    restart the cluster must be healthy from that node's view (as ``rolling_restart``); the first
    restart that fails stops the rest, which are reported as not restarted. A node the fallback runs
    on a host that gets the unit is switched to systemd in that same one-at-a-time turn
    (``switch_to_unit``)."""
    everyone = inventory_hosts or hosts
    installed = hosts_control.each(lambda c, h: install(c, h, wheelhouse, founders(h, everyone)), hosts)
    ready = [h for h in hosts if installed[h.name].ok]
    status = hosts_control.each(node_state, ready)
    changed = [h for h in ready if status[h.name].stdout == "fallback"
               or (status[h.name].stdout == "running" and installed[h.name].stdout != "unchanged")]

    def start(connection: Any, host: Host) -> HostResult:
        outcome = _check(connection.run(service_command(host, "start"), hide=True, warn=True, in_stream=False),
                         "dynactl service start")
        return HostResult(host=host.name, ok=True, stdout=f"{installed[host.name].stdout}; {outcome.stdout.strip()}")

    results = hosts_control.each(start, [h for h in ready if h not in changed])
    for position, host in enumerate(changed):
        switch = status[host.name].stdout == "fallback"
        try:
            done = _restart_one(hosts_control, host, [m.name for m in founders(host, everyone)], progress,
                                HEALTH_DEADLINE_SECONDS, step=switch_to_unit if switch else None)
        except DeployError as exc:
            results[host.name] = HostResult(host=host.name, ok=False, error=str(exc))
            for skipped in changed[position + 1:]:
                results[skipped.name] = HostResult(host=skipped.name, ok=False,
                                                   error=f"not restarted: {host.name} did not come back")
            break
        outcome = f"switched to the unit: {done}" if switch else "restarted"
        results[host.name] = HostResult(host=host.name, ok=True, stdout=f"{installed[host.name].stdout}; {outcome}")
    return {h.name: results.get(h.name, installed[h.name]) for h in hosts}


def node_state(connection: Any, host: Host) -> str:
    """``running``, ``stopped``, or ``fallback``: running under the fallback on a host whose unit
    waits for it to stop (``fallback_runs_node``)."""
    run = _runner(connection)
    if wants_unit(run, host) and fallback_runs_node(run, host):
        return "fallback"
    return "running" if run(service_command(host, "status")).exited == 0 else "stopped"


def wait_deployed(hosts: list[Host], everyone: list[Host], deadline_seconds: float = HEALTH_DEADLINE_SECONDS,
                  progress: Callable[[str], None] = lambda message: None) -> dict[str, str]:
    """Wait until every deployed node sees its configured members up; returns the hosts that
    did not, with why."""
    problems = {}
    for host in hosts:
        try:
            wait_healthy(host, [m.name for m in founders(host, everyone)], deadline_seconds,
                         lambda why, h=host: progress(f"{h.name}: {why}"))
        except DeployError as exc:
            problems[host.name] = str(exc)
    return problems


def cluster_health(host: Host, expected: list[str]) -> tuple[bool, str]:
    """Is the node on ``host`` serving, seeing every ``expected`` member up, with no transfer
    pending? Returns (healthy, what is missing)."""
    client = DynamoClient(host.http, timeout=3.0, credentials=host_credentials(host))
    try:
        status = client.status()
        transfers = client.transfers()
    except (NodeUnavailable, ClientError, OSError) as exc:
        return False, f"{host.name} does not answer ({exc})"
    finally:
        client.close()
    return health_of(host.name, status, transfers, expected)


def health_of(name: str, status: dict[str, Any], transfers: dict[str, Any], expected: list[str]) -> tuple[bool, str]:
    """``cluster_health``'s verdict from a node's ``/admin/status`` and ``/admin/transfers`` (pure)."""
    seen = {m["id"]: m["status"] for m in status.get("members", [])}
    not_up = [member for member in expected if seen.get(member) != "up" and member != status.get("node")]
    if not_up:
        views = ", ".join(f"{member} {seen.get(member, 'absent')}" for member in not_up)
        return False, f"{name} sees {views}"
    if not transfers.get("settled", True):
        pending = sum(m.get("pending_keys") or 0 for m in transfers.get("members", []))
        return False, f"{pending} keys still to transfer"
    return True, "healthy"


def wait_healthy(host: Host, expected: list[str], deadline_seconds: float = HEALTH_DEADLINE_SECONDS,
                 progress: Callable[[str], None] = lambda message: None) -> None:
    """Poll ``cluster_health`` until healthy; raise DeployError naming what is missing."""
    def check() -> tuple[bool, str]:
        healthy, why = cluster_health(host, expected)
        if not healthy:
            progress(why)
        return healthy, why

    healthy, why = wait_until(check, deadline_seconds, interval=0.5, done=lambda answer: answer[0])
    if not healthy:
        raise DeployError(f"{host.name} not healthy after {deadline_seconds:.0f}s: {why}")


def rolling_restart(hosts_control: Hosts, hosts: list[Host], everyone: list[Host],
                    progress: Callable[[str], None] = lambda message: None,
                    deadline_seconds: float = HEALTH_DEADLINE_SECONDS) -> list[str]:
    """Restart one node at a time; before each restart and after it, wait until the cluster is
    healthy from that node's view. Stops at the first node that does not come back."""
    expected = [h.name for h in everyone]
    done: list[str] = []
    for host in hosts:
        try:
            _restart_one(hosts_control, host, expected, progress, deadline_seconds)
        except DeployError as exc:
            left = [h.name for h in hosts if h.name not in done and h is not host]
            raise DeployError(f"{exc}; restarted so far: {', '.join(done) or 'none'}; "
                              f"not restarted: {', '.join(left) or 'none'}") from exc
        done.append(host.name)
    return done


def _restart_one(hosts_control: Hosts, host: Host, expected: list[str], progress: Callable[[str], None],
                 deadline_seconds: float, step: Callable[[Any, Host], Any] | None = None) -> str:
    """Restart ``host``'s node (``dynactl service restart``, or ``step``) between two health waits;
    returns what the restart said."""
    report = lambda why: progress(f"{host.name}: {why}")  # noqa: E731
    report("waiting for a healthy cluster before the restart")
    wait_healthy(host, expected, deadline_seconds, report)
    outcome = (hosts_control.each(step, [host]) if step else
               hosts_control.run(service_command(host, "restart"), [host]))[host.name]
    if not outcome.ok:
        raise DeployError(f"{host.name}: restart failed: {outcome.error}")
    report(f"{outcome.stdout.strip()}; waiting until it sees every member up and transfers are done")
    wait_healthy(host, expected, deadline_seconds, report)
    report("healthy")
    return outcome.stdout.strip()
