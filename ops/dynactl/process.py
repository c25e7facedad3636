"""dynamod processes on this machine: start detached, recognise, signal and stop by PID.

Shared by local clusters (``dynactl local``) and by the host-side supervisor (``dynactl service``,
the fallback for hosts without systemd). A PID is only ever signalled after /proc shows that it is
a dynamod started with the expected config file, so a recycled PID is never hit.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

from dynamod.polling import wait_until

STOP_GRACE_SECONDS = 10.0


def alive(pid: int | None) -> bool:
    """True when ``pid`` exists and is not a zombie (an exited child not yet reaped)."""
    if not pid:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def is_dynamod(pid: int | None, config_path: str) -> bool:
    """True when ``pid`` is alive and is the dynamod started with ``config_path``."""
    if not alive(pid):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return config_path.encode() in cmdline and any(b"dynamod" in part for part in cmdline)


def dynamod_command(config_path: str, python: str | None = None) -> list[str]:
    """The command line that runs a node with ``config_path``."""
    return [python or sys.executable, "-m", "dynamod", "--config", config_path]


def start_detached(argv: list[str], *, output: Path, cwd: Path, env: Mapping[str, str] | None = None,
                   preexec: Callable[[], None] | None = None) -> subprocess.Popen:
    """Start ``argv`` in a session of its own (it outlives us and our terminal), stdout and
    stderr appended to ``output``."""
    output.parent.mkdir(parents=True, exist_ok=True)
    with open(output, "ab") as sink:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=sink, stderr=sink, start_new_session=True,
                                cwd=str(cwd), env=dict(env) if env is not None else None, preexec_fn=preexec)


def wait_until_exec(process: subprocess.Popen, config_path: str, deadline_seconds: float = 5.0) -> None:
    """Until the child has exec'd, /proc shows the parent's command line: wait for the node's."""
    wait_until(lambda: is_dynamod(process.pid, config_path) or process.poll() is not None, deadline_seconds,
               interval=0.005)


def send(pid: int | None, config_path: str, signum: int) -> bool:
    """Send ``signum`` to the node if ``pid`` is still that node; False when it is not running."""
    if not is_dynamod(pid, config_path):
        return False
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        return False
    return True


def _wait_gone(pid: int, config_path: str, seconds: float) -> bool:
    def gone() -> bool:
        reap(pid)
        return not is_dynamod(pid, config_path)
    return wait_until(gone, seconds, interval=0.02)


def stop(pid: int | None, config_path: str, grace: float = STOP_GRACE_SECONDS) -> str:
    """SIGTERM (a paused node is continued so it can act on it), then SIGKILL after ``grace``
    seconds; returns how it ended."""
    if not send(pid, config_path, signal.SIGTERM):
        return "not running"
    send(pid, config_path, signal.SIGCONT)
    if _wait_gone(pid, config_path, grace):
        return "stopped"
    send(pid, config_path, signal.SIGKILL)
    _wait_gone(pid, config_path, 5.0)
    return "killed after grace period"


def kill(pid: int | None, config_path: str) -> str:
    """SIGKILL at once (a crash: no clean shutdown)."""
    if not send(pid, config_path, signal.SIGKILL):
        return "not running"
    _wait_gone(pid, config_path, 5.0)
    return "killed"


def reap(pid: int | None) -> None:
    """Collect the exit status of a child of this process (no zombie left)."""
    if not pid:
        return
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
