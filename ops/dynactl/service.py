"""Run one dynamod on this host: ``dynactl service start|stop|restart|status|kill|pause|resume``.

This runs *on* a node's host (Fabric, Ansible and the checker call it over SSH). On a host booted
with systemd and carrying the ``dynamod`` unit it drives systemctl; elsewhere (containers, the
testbed's namespaces) it is the supervisor itself: the node runs in its own session, its PID in a
pidfile next to the config, stdout/stderr appended to ``stderr.log`` beside the node's log file.
A start waits until the node answers ``/admin/status`` (a secured node over HTTPS, verified against
its CA; its refusal of a caller without credentials is an answer too: the host holds none).
"""

from __future__ import annotations

import os
import pwd
import signal
import subprocess
from pathlib import Path

import attrs

from dynactl import process
from dynactl.local import answers_status
from dynamod.client import Credentials, CredentialsError
from dynamod.config import ConfigError, build_config, load_toml
from dynamod.polling import wait_until

#: libfaketime's thread-safe variant: with the file re-read on every clock read, the plain library parses it
#: into shared static buffers, and the node's threads read the clock concurrently (the GIL's timed waits do).
FAKETIME_LIBRARY = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1"
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

    def probe_credentials(self) -> Credentials | None:
        """How this host checks that its node answers: under TLS, verifying the node against the
        cluster CA (HTTPS), with no client credentials."""
        settings = self._settings()
        if not settings.tls:
            return None
        # A relative path is the node's: it runs in its config's directory.
        credentials = Credentials(ca=str(self.config.parent / settings.tls_ca))
        try:
            credentials.ssl_context()
        except CredentialsError as exc:
            raise ServiceError(f"{settings.node_id}: {exc} (tls_ca in {self.config})") from None
        return credentials

    def answers(self) -> bool:
        """True when the node answers its HTTP API."""
        return answers_status(self.status_address(), credentials=self.probe_credentials())

    def output_path(self) -> Path:
        log_file = self._settings().log_file
        return (Path(log_file).parent if log_file != "-" else self.config.parent) / "stderr.log"

    # -- process ------------------------------------------------------------------------------------

    def uses_systemd(self) -> bool:
        return Path("/run/systemd/system").is_dir() and (SYSTEMD_UNIT_DIR / f"{self.unit}.service").is_file()

    def pid(self) -> int | None:
        """The running node's PID, or None."""
        if self.uses_systemd():
            return running_main_pid(self.unit_state())
        try:
            pid = int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if process.is_dynamod(pid, str(self.config)) else None

    def unit_state(self) -> dict[str, str]:
        """The unit's ``systemctl show`` properties that say whether the node runs."""
        shown = subprocess.run(["systemctl", "show", "-p", ",".join(UNIT_PROPERTIES), self.unit],
                               capture_output=True, text=True, check=False).stdout
        return parse_show(shown)

    def journal(self, lines: int = 15) -> str:
        """The last lines the unit's processes wrote (under systemd the journal has them, not a file)."""
        shown = subprocess.run(["journalctl", "--unit", self.unit, "--lines", str(lines), "--no-pager",
                                "--output", "cat"], capture_output=True, text=True, check=False)
        return shown.stdout.strip() or shown.stderr.strip() or "(no output)"

    def start(self, wait: float = 30.0) -> str:
        running = self.pid()
        if running:
            return f"already running pid {running}"
        settings = self._settings()
        if self.uses_systemd():
            self._set_faketime_dropin(self.faketime_file)
            # A failed start counts against systemd's start rate limit (5 in 10 s by default); a fault
            # schedule or a rolling restart starts the unit often and on purpose: forget earlier failures.
            subprocess.run(["systemctl", "reset-failed", self.unit], capture_output=True, check=False)
            _systemctl("start", self.unit)
        else:
            child = process.start_detached(
                process.dynamod_command(str(self.config)), output=self.output_path(), cwd=self.config.parent,
                env=self._environment(), preexec=self._drop_privileges())
            self.pidfile.write_text(f"{child.pid}\n")
            process.wait_until_exec(child, str(self.config))
        self._wait_serving(settings.node_id, wait)
        return f"started pid {self.pid()}"

    def _set_faketime_dropin(self, timestamp_file: str | None) -> None:
        """Under systemd the unit's environment is the node's: a runtime drop-in (gone at reboot) sets
        the libfaketime variables when a clock file is given and is removed when none is."""
        dropin = FAKETIME_DROPIN_DIR / f"{self.unit}.service.d" / "faketime.conf"
        wanted = None
        if timestamp_file:
            _require_faketime_library()
            wanted = faketime_dropin(timestamp_file)
        present = dropin.read_text() if dropin.is_file() else None
        if present == wanted:
            return
        if wanted is None:
            dropin.unlink()
        else:
            dropin.parent.mkdir(parents=True, exist_ok=True)
            dropin.write_text(wanted)
        _systemctl("daemon-reload")

    def stop(self) -> str:
        if self.uses_systemd():
            was_running = self.pid() is not None
            _systemctl("stop", self.unit)
            # The skew belonged to the run that started the node with --faketime: whoever starts the
            # unit next (systemd at boot, Ansible, systemctl) gets the real clock.
            self._set_faketime_dropin(None)
            return "stopped" if was_running else "not running"
        how = process.stop(self.pid(), str(self.config))
        self.pidfile.unlink(missing_ok=True)
        return how

    def signal(self, signum: int, done: str) -> str:
        """kill -9, pause (SIGSTOP), resume (SIGCONT): faults for the checker's nemeses."""
        pid = self.pid()
        if signum == signal.SIGKILL and self.uses_systemd():
            if pid is None:
                return "not running"
            # A crash that stays down until the next start: Restart=on-failure would bring the node
            # back within RestartSec, so the stop that follows cancels the restart systemd queued.
            _systemctl("kill", self.unit, "--signal=SIGKILL", "--kill-whom=main")
            _systemctl("stop", self.unit)
            return f"{done} pid {pid} (unit {self.unit} stopped: systemd does not restart it)"
        if signum == signal.SIGKILL:  # kill also waits until the process is gone
            return "not running" if process.kill(pid, str(self.config)) == "not running" else f"{done} pid {pid}"
        if not process.send(pid, str(self.config), signum):
            return "not running"
        return f"{done} pid {pid}"

    def status(self) -> tuple[bool, str]:
        pid = self.pid()
        if pid is None:
            return False, "not running"
        return True, f"running pid {pid}{'' if self.answers() else ' (not answering /admin/status)'}"

    def _environment(self) -> dict[str, str]:
        environment = dict(os.environ)
        if self.faketime_file:
            _require_faketime_library()
            environment.update(faketime_environment(self.faketime_file, environment.get("LD_PRELOAD", "")))
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
        address, credentials = self.status_address(), self.probe_credentials()

        def serving() -> bool:
            if self.uses_systemd():
                state = self.unit_state()
                if unit_start_failed(state):
                    raise ServiceError(f"{node_id}: unit {self.unit} is {state.get('ActiveState')} "
                                       f"({state.get('SubState')}, result {state.get('Result')}); last lines of "
                                       f"its journal:\n{self.journal()}")
                if running_main_pid(state) is None:
                    return False  # still activating
            elif self.pid() is None:
                raise ServiceError(f"{node_id} exited during start-up; last lines of {self.output_path()}:\n"
                                   + _tail(self.output_path()))
            return answers_status(address, credentials=credentials)

        if not wait_until(serving, wait, interval=0.1):
            scheme = "https" if credentials is not None else "http"
            raise ServiceError(f"{node_id} runs but does not answer {scheme}://{address}/admin/status after "
                               f"{wait:.0f}s")


def faketime_environment(timestamp_file: str, preload: str = "") -> dict[str, str]:
    """The variables that run a process under libfaketime with only its wall clock moved: by the offset
    (``+1.500``, ``-300``) in ``timestamp_file``, re-read on every read so a change applies at once."""
    return {
        "LD_PRELOAD": ":".join(filter(None, (FAKETIME_LIBRARY, preload))),
        "FAKETIME_TIMESTAMP_FILE": timestamp_file,
        # Every wall-clock read re-reads the file (open, fstat, read, close: ~5 us; a node reads the wall
        # clock a few times per request): the strobe flips it every 25-100 ms, and the cache
        # (FAKETIME_CACHE_DURATION) refreshes at most once per whole second.
        "FAKETIME_NO_CACHE": "1",
        # The monotonic clock stays real: the node's timers, timeouts and failure detector run on it.
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        # libfaketime up to 0.9.12 converts the deadline of a pthread_cond_timedwait on a monotonic
        # condition variable through the *faked* monotonic clock, an epoch-sized value in offset mode;
        # the "forced monotonic fix" (on by default for glibc >= 2.30) then makes it negative, so every
        # such wait times out at once. CPython's GIL waits that way: a thread wanting the GIL spun,
        # re-reading the file while it held the GIL's mutex, and requests stalled for seconds.
        # Without the fix the deadline passes through unchanged, as it should with a real monotonic
        # clock. (Upstream fixed the conversion after 0.9.12, commit a2e406c; tests/integration/
        # test_faketime.py fails if a libfaketime needs this switch the other way.)
        "FAKETIME_FORCE_MONOTONIC_FIX": "0",
        # File timestamps stay real (each faked stat() would also re-read the file three times).
        # No setting mends one more 0.9.10 bug (fixed in 0.9.11): a sleep until a monotonic deadline
        # (clock_nanosleep TIMER_ABSTIME, which time.sleep uses) fails with EINVAL: the node must not sleep
        # (it does not: its timers are reactor calls).
        "NO_FAKE_STAT": "1",
    }


#: What ``systemctl show`` is asked about the unit.
UNIT_PROPERTIES = ("ActiveState", "SubState", "MainPID", "Result")
#: Runtime drop-ins live in /run: a reboot forgets a clock skew, as it forgets the faketime file's effect.
FAKETIME_DROPIN_DIR = Path("/run/systemd/system")


def parse_show(text: str) -> dict[str, str]:
    """``systemctl show -p ...`` output (KEY=VALUE lines) as a dict."""
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def running_main_pid(state: dict[str, str]) -> int | None:
    """The main PID of a unit that runs (active, or reloading), else None. The PID systemd names is
    trusted as it is: right after ``systemctl start`` the process has not exec'd yet and its command
    line reads ``(dynamod)``."""
    pid = state.get("MainPID", "0")
    if state.get("ActiveState") in ("active", "reloading") and pid.isdigit() and pid != "0":
        return int(pid)
    return None


def unit_start_failed(state: dict[str, str]) -> bool:
    """True once a start has visibly failed: the unit is failed, its process exited and systemd waits
    to restart it (``auto-restart``), or it went back to inactive."""
    return (state.get("ActiveState") in ("failed", "inactive")
            or state.get("SubState") == "auto-restart")


def faketime_dropin(timestamp_file: str) -> str:
    """A unit drop-in that runs the node under libfaketime (``faketime_environment``)."""
    lines = ["# Written by dynactl service start --faketime; removed by a start without it.", "[Service]"]
    lines += [f'Environment="{key}={value}"' for key, value in faketime_environment(timestamp_file).items()]
    return "\n".join(lines) + "\n"


def _systemctl(action: str, *arguments: str) -> None:
    result = subprocess.run(["systemctl", action, *arguments], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise ServiceError(f"systemctl {action} {' '.join(arguments)} failed: {result.stderr.strip()}")


def _require_faketime_library() -> None:
    if not Path(FAKETIME_LIBRARY).is_file():
        raise ServiceError(f"--faketime needs libfaketime ({FAKETIME_LIBRARY}): apt-get install faketime")


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no output)"
