"""Deploy and run dynamod on hosts over SSH (Fabric): install, configure, start, restart in turn.

A host's layout is the Ansible role's (``ansible/roles/dynamod``): ``HOME/wheels`` (uploaded from
the controller's wheelhouse), ``HOME/venv``, ``HOME/node.toml``, data and log directories, and
``HOME/venv/bin/dynactl service ...`` to start and stop the node, so hosts provisioned by either
tool can be driven by both.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dynactl import certs
from dynactl.credentials import host_credentials
from dynactl.inventory import Host
from dynactl.package import DISTRIBUTION, WHEEL_PREFIX
from dynactl.remote import HostError, HostResult, Hosts
from dynamod.client import ClientError, Credentials, DynamoClient, NodeUnavailable
from dynamod.polling import wait_until
from dynamod.security.identity import Role

HEALTH_DEADLINE_SECONDS = 120.0


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


def uses_tls(host: Host) -> bool:
    """``dynamod_tls`` (the role's variable; an INI inventory gives it as text)."""
    value = host.var("dynamod_tls")
    return value.strip().lower() in ("true", "yes", "1") if isinstance(value, str) else bool(value)


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
    run = lambda command: connection.run(command, hide=True, warn=True, in_stream=False)  # noqa: E731
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


def _check(result: Any, step: str) -> Any:
    if result.exited != 0:
        last = (result.stderr.strip() or result.stdout.strip() or "no output").splitlines()[-1]
        raise DeployError(f"{step} failed (exit {result.exited}): {last}")
    return result


def install(connection: Any, host: Host, wheelhouse: dict[str, Any], members: list[Host]) -> str:
    """Put the wheels, the venv, the project and node.toml on one host; returns what changed."""
    run = lambda command, **kw: connection.run(command, hide=True, warn=True, in_stream=False, **kw)  # noqa: E731
    python = shlex.quote(host.python)
    if run(f"test -x {python}").exited != 0:
        raise DeployError(f"no Python at {host.python} (install python3 and python3-venv, or set "
                          "ansible_python_interpreter)")
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
    changes = []
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
        with tempfile.NamedTemporaryFile("w", suffix=".toml") as draft:
            draft.write(config)
            draft.flush()
            connection.put(draft.name, host.config_path)
        changes.append("wrote node.toml")
    # Always, not only after an upload: the upload keeps the draft's mode (0600, NamedTemporaryFile's),
    # and a node.toml an earlier deploy left so is unreadable by the service user the node runs as.
    _check(run(config_mode_command(host)), "mode of node.toml")
    return ", ".join(changes) if changes else "unchanged"


def config_mode_command(host: Host) -> str:
    """The shell command giving node.toml the role's ownership: root, group of the service user,
    0640 (the node reads it; nobody else needs to); 0644 when the node runs as the SSH user."""
    path = shlex.quote(host.config_path)
    user = host.var("dynamod_user")
    if not user:
        return f"chmod 0644 {path}"
    group = shlex.quote(str(host.var("dynamod_group") or user))
    return f"chown root:{group} {path} && chmod 0640 {path}"


def deploy(hosts_control: Hosts, hosts: list[Host], wheelhouse: dict[str, Any],
           inventory_hosts: list[Host] | None = None,
           progress: Callable[[str], None] = lambda message: None) -> dict[str, HostResult]:
    """Install and configure every host in parallel, then start each node that does not run (in
    parallel) and restart, one at a time, each running node whose software or config changed:
    restarting them together would take the whole cluster down at once. Before and after each
    restart the cluster must be healthy from that node's view (as ``rolling_restart``); the first
    restart that fails stops the rest, which are reported as not restarted."""
    everyone = inventory_hosts or hosts
    installed = hosts_control.each(lambda c, h: install(c, h, wheelhouse, founders(h, everyone)), hosts)
    ready = [h for h in hosts if installed[h.name].ok]
    status = hosts_control.each(
        lambda c, h: "running" if c.run(service_command(h, "status"), hide=True, warn=True,
                                        in_stream=False).exited == 0 else "stopped", ready)
    changed = [h for h in ready if status[h.name].stdout == "running" and installed[h.name].stdout != "unchanged"]

    def start(connection: Any, host: Host) -> HostResult:
        outcome = _check(connection.run(service_command(host, "start"), hide=True, warn=True, in_stream=False),
                         "dynactl service start")
        return HostResult(host=host.name, ok=True, stdout=f"{installed[host.name].stdout}; {outcome.stdout.strip()}")

    results = hosts_control.each(start, [h for h in ready if h not in changed])
    for position, host in enumerate(changed):
        try:
            _restart_one(hosts_control, host, [m.name for m in founders(host, everyone)], progress,
                         HEALTH_DEADLINE_SECONDS)
        except DeployError as exc:
            results[host.name] = HostResult(host=host.name, ok=False, error=str(exc))
            for skipped in changed[position + 1:]:
                results[skipped.name] = HostResult(host=skipped.name, ok=False,
                                                   error=f"not restarted: {host.name} did not come back")
            break
        results[host.name] = HostResult(host=host.name, ok=True, stdout=f"{installed[host.name].stdout}; restarted")
    return {h.name: results.get(h.name, installed[h.name]) for h in hosts}


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
    seen = {m["id"]: m["status"] for m in status.get("members", [])}
    not_up = [name for name in expected if seen.get(name) != "up" and name != status.get("node")]
    if not_up:
        views = ", ".join(f"{name} {seen.get(name, 'absent')}" for name in not_up)
        return False, f"{host.name} sees {views}"
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
                 deadline_seconds: float) -> None:
    report = lambda why: progress(f"{host.name}: {why}")  # noqa: E731
    report("waiting for a healthy cluster before the restart")
    wait_healthy(host, expected, deadline_seconds, report)
    outcome = hosts_control.run(service_command(host, "restart"), [host])[host.name]
    if not outcome.ok:
        raise DeployError(f"{host.name}: restart failed: {outcome.error}")
    report(f"{outcome.stdout.strip()}; waiting until it sees every member up and transfers are done")
    wait_healthy(host, expected, deadline_seconds, report)
    report("healthy")
