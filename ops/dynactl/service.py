"""Run one dynamod on this host: ``dynactl service start|stop|restart|status|kill|pause|resume``.

This runs *on* a node's host (Fabric, Ansible and the checker call it over SSH). On a host booted
with systemd and carrying the ``dynamod`` unit it drives systemctl; elsewhere (containers, the
testbed's namespaces) it is the supervisor itself: the node runs in its own session, its PID in a
pidfile next to the config, stdout/stderr appended to ``stderr.log`` beside the node's log file.
A start waits until the node answers ``/admin/status``.
"""

from __future__ import annotations

import os
import pwd
import signal
import subprocess
import time
from pathlib import Path

import attrs

from dynactl import process
from dynactl.local import fetch_status
from dynamod.config import ConfigError, build_config, load_toml

FAKETIME_LIBRARY = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"
SYSTEMD_UNIT_DIR = Path("/etc/systemd/system")


class ServiceError(Exception):
    """The node could not be brought to the asked state; the message says why."""


@attrs.define
class Service:
    """The dynamod described by one node.toml on this host."""

    config: Path
    pidfile: Path
    user: str | None = None
    faketime_file: str | None = None
    unit: str = "dynamod"

    @classmethod
    def from_config(cls, config: str, pidfile: str | None = None, **options) -> Service:
        path = Path(config).resolve()
        if not path.is_file():
            raise ServiceError(f"no config at {path}")
        return cls(config=path, pidfile=Path(pidfile) if pidfile else path.parent / "dynamod.pid", **options)

    # -- what the config says ----------------------------------------------------------------------

    def _settings(self):
        try:
            return build_config(load_toml(str(self.config)))
        except ConfigError as exc:
            raise ServiceError(str(exc)) from exc

    def status_address(self) -> str:
        """Where this node answers HTTP, as reachable from this host."""
        host, _, port = self._settings().http.rpartition(":")
        return f"{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{port}"

    def output_path(self) -> Path:
        log_file = self._settings().log_file
        return (Path(log_file).parent if log_file != "-" else self.config.parent) / "stderr.log"

    # -- process ------------------------------------------------------------------------------------

    def uses_systemd(self) -> bool:
        return Path("/run/systemd/system").is_dir() and (SYSTEMD_UNIT_DIR / f"{self.unit}.service").is_file()

    def pid(self) -> int | None:
        """The running node's PID, or None."""
        if self.uses_systemd():
            shown = subprocess.run(["systemctl", "show", "-p", "MainPID", "--value", self.unit],
                                   capture_output=True, text=True, check=False).stdout.strip()
            pid = int(shown) if shown.isdigit() and shown != "0" else None
        else:
            try:
                pid = int(self.pidfile.read_text().strip())
            except (OSError, ValueError):
                return None
        return pid if process.is_dynamod(pid, str(self.config)) else None

    def start(self, wait: float = 30.0) -> str:
        running = self.pid()
        if running:
            return f"already running pid {running}"
        settings = self._settings()
        if self.uses_systemd():
            _systemctl("start", self.unit)
        else:
            child = process.start_detached(
                process.dynamod_command(str(self.config)), output=self.output_path(), cwd=self.config.parent,
                env=self._environment(), preexec=self._drop_privileges())
            self.pidfile.write_text(f"{child.pid}\n")
            process.wait_until_exec(child, str(self.config))
        self._wait_serving(settings.node_id, wait)
        return f"started pid {self.pid()}"

    def stop(self) -> str:
        if self.uses_systemd():
            was_running = self.pid() is not None
            _systemctl("stop", self.unit)
            return "stopped" if was_running else "not running"
        how = process.stop(self.pid(), str(self.config))
        self.pidfile.unlink(missing_ok=True)
        return how

    def signal(self, signum: int, done: str) -> str:
        """kill -9, pause (SIGSTOP), resume (SIGCONT): faults for the checker's nemeses."""
        pid = self.pid()
        if signum == signal.SIGKILL:  # kill also waits until the process is gone
            return "not running" if process.kill(pid, str(self.config)) == "not running" else f"{done} pid {pid}"
        if not process.send(pid, str(self.config), signum):
            return "not running"
        return f"{done} pid {pid}"

    def status(self) -> tuple[bool, str]:
        pid = self.pid()
        if pid is None:
            return False, "not running"
        answering = fetch_status(self.status_address()) is not None
        return True, f"running pid {pid}{'' if answering else ' (not answering /admin/status)'}"

    def _environment(self) -> dict[str, str]:
        environment = dict(os.environ)
        if self.faketime_file:
            if not Path(FAKETIME_LIBRARY).is_file():
                raise ServiceError(f"--faketime needs libfaketime ({FAKETIME_LIBRARY}): apt-get install faketime")
            # Re-read the timestamp file on every call so a nemesis can move this node's clock at will.
            # The node's timers use the monotonic clock, which stays real: only wall time is skewed.
            environment.update(LD_PRELOAD=FAKETIME_LIBRARY, FAKETIME_TIMESTAMP_FILE=self.faketime_file,
                               FAKETIME_NO_CACHE="1", FAKETIME_DONT_FAKE_MONOTONIC="1")
        return environment

    def _drop_privileges(self):
        if not self.user or os.geteuid() != 0:
            return None
        try:
            account = pwd.getpwnam(self.user)
        except KeyError as exc:
            raise ServiceError(f"no user {self.user!r} on this host") from exc

        def become_user() -> None:
            os.setgid(account.pw_gid)
            os.initgroups(self.user, account.pw_gid)
            os.setuid(account.pw_uid)
        return become_user

    def _wait_serving(self, node_id: str, wait: float) -> None:
        deadline = time.monotonic() + wait
        address = self.status_address()
        while time.monotonic() < deadline:
            if self.pid() is None:
                raise ServiceError(f"{node_id} exited during start-up; last lines of {self.output_path()}:\n"
                                   + _tail(self.output_path()))
            if fetch_status(address) is not None:
                return
            time.sleep(0.1)
        raise ServiceError(f"{node_id} runs but does not answer http://{address}/admin/status after {wait:.0f}s")


def _systemctl(action: str, unit: str) -> None:
    result = subprocess.run(["systemctl", action, unit], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise ServiceError(f"systemctl {action} {unit} failed: {result.stderr.strip()}")


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no output)"
