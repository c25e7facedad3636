"""One test machine: a Debian system booted by systemd-nspawn with systemd as PID 1, in a network
namespace the testbed made, on an overlay of the shared root file system.

The testbed (``dynactl.testbed``) mounts the overlay and writes the machine's own files
(``prepare_root``), then starts ``python -m dynactl.machine CONFIG``: the supervisor. It moves
itself into a cgroup of its own in each hierarchy systemd needs (PID 1 of this box is not systemd,
so nspawn runs with ``--keep-unit --register=no`` in the caller's cgroup, which the machine's
systemd then takes over), boots the machine, boots it again when it asked for a reboot (nspawn
exits 133) and, on SIGTERM, shuts it down cleanly (nspawn turns SIGTERM into a poweroff of the
machine) and exits. ``remove_cgroups`` and ``unmount`` undo the rest once it has exited.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
#: The hierarchies the machine's systemd (252, on a cgroup v1 hybrid host) writes to.
CGROUP_HIERARCHIES = ("systemd", "unified", "memory")
#: nspawn's exit status when the machine rebooted.
REBOOT_STATUS = 133


def nspawn_argv(root: Path, machine: str, netns: str) -> list[str]:
    """The nspawn command booting ``root`` as ``machine`` in the network namespace ``netns``."""
    return ["systemd-nspawn", "--quiet", "--keep-unit", "--register=no", "--boot", f"--directory={root}",
            f"--machine={machine}", f"--network-namespace-path=/run/netns/{netns}",
            "--capability=CAP_NET_ADMIN",  # iptables for the partition nemesis
            "--resolv-conf=off", "--timezone=off", "--link-journal=no", "--console=passive"]


def cgroup_dirs(name: str, root: Path = CGROUP_ROOT) -> list[Path]:
    """The machine's cgroup in each hierarchy this box mounts."""
    return [root / hierarchy / name for hierarchy in CGROUP_HIERARCHIES if (root / hierarchy).is_dir()]


def join_cgroups(name: str, pid: int) -> None:
    for directory in cgroup_dirs(name):
        directory.mkdir(exist_ok=True)
        (directory / "cgroup.procs").write_text(f"{pid}\n")


def remove_cgroups(name: str, root: Path = CGROUP_ROOT) -> list[str]:
    """Remove the machine's cgroups, deepest first (its systemd made slices and scopes inside);
    returns those removed. Only empty cgroups can go: call it once the machine has stopped."""
    removed = []
    for directory in cgroup_dirs(name, root):
        if not directory.is_dir():
            continue
        for sub in sorted((p for p in directory.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
            sub.rmdir()
        directory.rmdir()
        removed.append(str(directory))
    return removed


def is_mounted(path: Path) -> bool:
    target = str(path)
    with open("/proc/self/mounts") as mounts:
        return any(line.split()[1] == target for line in mounts if len(line.split()) > 1)


def mount_overlay(lower: Path, upper: Path, work: Path, merged: Path) -> None:
    """The machine's root: the shared image below, its own changes in ``upper`` (they survive a
    reboot of the machine and a repair by ``testbed up``)."""
    for directory in (upper, work, merged):
        directory.mkdir(parents=True, exist_ok=True)
    if is_mounted(merged):
        return
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                    f"lowerdir={lower},upperdir={upper},workdir={work}", str(merged)],
                   capture_output=True, text=True, check=True)


def unmount(merged: Path) -> bool:
    if not is_mounted(merged):
        return False
    result = subprocess.run(["umount", str(merged)], capture_output=True, text=True, check=False)
    if result.returncode != 0:  # something still holds it (a shell cd'ed in): detach it anyway
        subprocess.run(["umount", "--lazy", str(merged)], capture_output=True, text=True, check=True)
    return True


def prepare_root(root: Path, hostname: str, authorized_keys: str, host_key: Path) -> None:
    """The files that make a machine this host: its name, root's SSH key, its own SSH host key, an
    empty resolv.conf (the machines have no DNS: addresses only)."""
    (root / "etc" / "hostname").write_text(hostname + "\n")
    (root / "etc" / "hosts").write_text(f"127.0.0.1 localhost\n127.0.1.1 {hostname}\n")
    resolv = root / "etc" / "resolv.conf"
    resolv.unlink(missing_ok=True)
    resolv.write_text("")
    ssh = root / "root" / ".ssh"
    ssh.mkdir(mode=0o700, parents=True, exist_ok=True)
    (ssh / "authorized_keys").write_text(authorized_keys)
    (ssh / "authorized_keys").chmod(0o600)
    for suffix, mode in (("", 0o600), (".pub", 0o644)):
        target = root / "etc" / "ssh" / f"ssh_host_ed25519_key{suffix}"
        target.write_bytes(Path(f"{host_key}{suffix}").read_bytes())
        target.chmod(mode)


def supervise(config: dict[str, str]) -> int:
    """Boot the machine until it powers off or this process gets SIGTERM; returns nspawn's status."""
    join_cgroups(config["cgroup"], os.getpid())
    stopping = False
    child: subprocess.Popen | None = None

    def stop(signum, frame) -> None:
        nonlocal stopping
        stopping = True
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while True:
        child = subprocess.Popen(nspawn_argv(Path(config["root"]), config["machine"], config["netns"]))
        status = child.wait()
        if stopping or status != REBOOT_STATUS:
            return status
        print(f"machine {config['machine']} rebooted; booting it again", flush=True)


if __name__ == "__main__":
    sys.exit(supervise(json.loads(Path(sys.argv[1]).read_text())))
