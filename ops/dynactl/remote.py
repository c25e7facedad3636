"""Run commands on hosts, in parallel, with one clear result per host.

Used by ``dynactl`` (deploy, start/stop, rolling restart) and by the checker. ``SshHosts`` goes
over SSH with Fabric (a ThreadingGroup for the same command everywhere, a thread per host for
per-host work), ``LocalHosts`` runs on this machine with the same interface. Failures never raise
out of a parallel call: each host gets a ``HostResult`` whose ``line()`` says what happened there.
"""

from __future__ import annotations

import shutil
import socket
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import attrs
import invoke
import paramiko
from fabric import Connection, ThreadingGroup
from fabric.exceptions import GroupException

from dynactl.inventory import Host

CONNECT_TIMEOUT_SECONDS = 10.0


class HostError(Exception):
    """A step that failed on one host; its message is the whole explanation."""


@attrs.frozen
class HostResult:
    """What one host did: a command's exit code and output, or why it could not."""

    host: str
    ok: bool
    exit_code: int | None = None
    stdout: str = ""
    stderr: str = ""
    error: str | None = None

    def line(self) -> str:
        """One line for people: ``h1: ok`` or ``h1: <why not>``."""
        if self.ok:
            return f"{self.host}: ok" + (f" ({self.stdout.strip().splitlines()[-1]})" if self.stdout.strip() else "")
        return f"{self.host}: {self.error}"

    def as_json(self) -> dict[str, Any]:
        return attrs.asdict(self)


def describe_error(exc: BaseException, host: Host) -> str:
    """Why a host could not be worked on, in one line an operator can act on."""
    target = f"{host.ssh_user}@{host.address}:{host.ssh_port}"
    if isinstance(exc, HostError):
        return str(exc)
    if isinstance(exc, invoke.exceptions.CommandTimedOut):
        return f"timed out after {exc.timeout:g}s: {exc.result.command}"
    if isinstance(exc, invoke.exceptions.UnexpectedExit):
        return _failed_command(exc.result.command, exc.result.exited, exc.result.stderr)
    if isinstance(exc, paramiko.BadHostKeyException):
        return f"host key of {host.address} does not match {host.known_hosts or 'known_hosts'} (man in the middle?)"
    if isinstance(exc, paramiko.AuthenticationException):
        return f"ssh authentication failed for {target} with key {host.ssh_key or '(agent/default keys)'}"
    if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError):
        causes = sorted({(error.strerror or str(error)).lower() for error in exc.errors.values()})
        return f"unreachable: nothing accepts SSH at {target} ({'; '.join(causes) or 'connection refused'})"
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return f"unreachable: no answer from {target} within the connect timeout"
    if isinstance(exc, paramiko.SSHException) and "not found in known_hosts" in str(exc):
        return f"host key of {host.address} is not in {host.known_hosts or 'known_hosts'}"
    if isinstance(exc, FileNotFoundError) and host.ssh_key and exc.filename == host.ssh_key:
        return f"ssh key {host.ssh_key} does not exist"
    if isinstance(exc, FileNotFoundError):
        return f"{exc.strerror or 'No such file or directory'}: {exc.filename or exc}"
    if isinstance(exc, OSError) and exc.errno is not None:
        return f"unreachable: {target}: {exc.strerror or exc}"
    return f"{type(exc).__name__}: {exc}"


def _failed_command(command: str, exit_code: int, stderr: str) -> str:
    last = stderr.strip().splitlines()[-1] if stderr.strip() else "no error output"
    return f"`{command}` exited {exit_code}: {last}"


def _from_invoke(host: str, result: invoke.Result) -> HostResult:
    ok = result.exited == 0
    return HostResult(host=host, ok=ok, exit_code=result.exited, stdout=result.stdout, stderr=result.stderr,
                      error=None if ok else _failed_command(result.command, result.exited, result.stderr))


class LocalConnection(invoke.Context):
    """A Fabric-like connection to this machine: run, put and get without SSH."""

    def put(self, local: str, remote: str) -> None:
        shutil.copyfile(local, remote)

    def get(self, remote: str, local: str) -> None:
        shutil.copyfile(remote, local)


class Hosts:
    """Parallel work on a fixed list of hosts (the base class: how work fans out)."""

    def __init__(self, hosts: Iterable[Host]):
        self.hosts = list(hosts)

    def connection(self, host: Host) -> Any:
        raise NotImplementedError

    def _chosen(self, hosts: Iterable[Host] | None) -> list[Host]:
        return self.hosts if hosts is None else list(hosts)

    def each(self, work: Callable[[Any, Host], Any], hosts: Iterable[Host] | None = None) -> dict[str, HostResult]:
        """Run ``work(connection, host)`` on every host at once. It returns a HostResult, an
        invoke Result, or text to report; an exception becomes that host's error."""
        chosen = self._chosen(hosts)

        def attempt(host: Host) -> HostResult:
            try:
                outcome = work(self.connection(host), host)
            except Exception as exc:  # noqa: BLE001 - reported per host, never lost
                return HostResult(host=host.name, ok=False, error=describe_error(exc, host))
            if isinstance(outcome, HostResult):
                return outcome
            if isinstance(outcome, invoke.Result):
                return _from_invoke(host.name, outcome)
            return HostResult(host=host.name, ok=True, stdout=str(outcome or ""))

        if not chosen:
            return {}
        with ThreadPoolExecutor(max_workers=min(32, len(chosen))) as pool:
            return dict(zip((h.name for h in chosen), pool.map(attempt, chosen), strict=True))

    def run(self, command: str, hosts: Iterable[Host] | None = None,
            timeout: float | None = None) -> dict[str, HostResult]:
        """The same shell command on every host; a non-zero exit is a failed HostResult."""
        return self.each(lambda connection, host: connection.run(command, hide=True, warn=True, timeout=timeout,
                                                                 in_stream=False), hosts)

    def put(self, local: str, remote: str, hosts: Iterable[Host] | None = None) -> dict[str, HostResult]:
        """Upload one file to every host."""
        return self.each(lambda connection, host: connection.put(local, remote) and "", hosts)

    def get(self, remote: str, local_dir: str, hosts: Iterable[Host] | None = None) -> dict[str, HostResult]:
        """Download ``remote`` from every host to ``local_dir/<host>/<name>``."""
        def fetch(connection: Any, host: Host) -> str:
            target = Path(local_dir) / host.name / Path(remote).name
            target.parent.mkdir(parents=True, exist_ok=True)
            connection.get(remote, str(target))
            return str(target)
        return self.each(fetch, hosts)

    def close(self) -> None:
        """Close what connections hold open."""

    def __enter__(self) -> Hosts:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LocalHosts(Hosts):
    """Hosts that are this machine (``dynacheck --local``): commands run as subprocesses."""

    def connection(self, host: Host) -> LocalConnection:
        return LocalConnection()


class SshHosts(Hosts):
    """Hosts reached over SSH with Fabric; host keys checked against the inventory's known_hosts."""

    def __init__(self, hosts: Iterable[Host], connect_timeout: float = CONNECT_TIMEOUT_SECONDS):
        super().__init__(hosts)
        self.connect_timeout = connect_timeout
        self._connections: dict[str, Connection] = {}

    def connection(self, host: Host) -> Connection:
        if host.name not in self._connections:
            connect_kwargs: dict[str, Any] = {"banner_timeout": self.connect_timeout,
                                              "auth_timeout": self.connect_timeout}
            if host.ssh_key:
                if not Path(host.ssh_key).is_file():
                    raise FileNotFoundError(2, "no such key", host.ssh_key)
                connect_kwargs.update(key_filename=host.ssh_key, look_for_keys=False, allow_agent=False)
            connection = Connection(host.address, user=host.ssh_user, port=host.ssh_port,
                                    connect_timeout=self.connect_timeout, connect_kwargs=connect_kwargs)
            if host.known_hosts:
                connection.client.load_host_keys(host.known_hosts)
                connection.client.set_missing_host_key_policy(paramiko.RejectPolicy())
            self._connections[host.name] = connection
        return self._connections[host.name]

    def run(self, command: str, hosts: Iterable[Host] | None = None,
            timeout: float | None = None) -> dict[str, HostResult]:
        """The same command on every host through a Fabric ThreadingGroup."""
        chosen = self._chosen(hosts)
        results: dict[str, HostResult] = {}
        by_connection: dict[Connection, Host] = {}
        for host in chosen:
            try:
                by_connection[self.connection(host)] = host
            except Exception as exc:  # noqa: BLE001 - e.g. a missing key file: that host's error
                results[host.name] = HostResult(host=host.name, ok=False, error=describe_error(exc, host))
        if by_connection:
            try:
                outcomes = ThreadingGroup.from_connections(list(by_connection)).run(
                    command, hide=True, warn=True, timeout=timeout, in_stream=False)
            except GroupException as exc:
                outcomes = exc.result
            for connection, outcome in outcomes.items():
                host = by_connection[connection]
                results[host.name] = _from_invoke(host.name, outcome) if isinstance(outcome, invoke.Result) else \
                    HostResult(host=host.name, ok=False, error=describe_error(outcome, host))
        return {h.name: results[h.name] for h in chosen}

    def close(self) -> None:
        for connection in self._connections.values():
            connection.close()
        self._connections.clear()

