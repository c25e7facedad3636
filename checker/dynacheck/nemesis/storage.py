"""Storage faults: a node loses its disk, loses power, or finds its files corrupt (Jepsen's
``lose-unsynced-writes`` through LazyFS, and its file-corruption nemesis).

Each is a crash: the node is killed (``kill -9``), its storage is damaged while it is down, and
stopping the fault starts it again on what is left, once it has checked that the node stayed down
(``dynacheck.nemesis.effect``: a node something else restarted was damaged while it ran).

* ``disk``: the data dir is wiped; the node restarts empty, with a new incarnation, and must be
  refilled by anti-entropy.
* ``power``: everything the node wrote but did not fsync is lost (its data dir lives on the
  ``dynacheck.lazyfs`` FUSE layer, mounted before the nodes start when ``power`` is chosen).
  Nothing acknowledged may be lost: every acknowledgement waits for an fsync.
* ``corrupt``: bits flipped in, or a truncation of, one of its Berkeley DB files
  (``dynacheck.nemesis.corruption``); the node must notice, serve nothing corrupt, and recover
  what it lost from its peers.

A lost disk or a corrupt file destroys the copies one node held. The store promises that an
acknowledged write survives the loss of fewer than W copies, so ``DataLoss`` lets such a fault
happen only when every earlier loss is known to be repaired: no node holds hinted keys and every
node has completed an anti-entropy sweep (every partition it replicates exchanged with every other
replica of it) that began after the loss, so every replica holds every version any replica held.
Otherwise the fault is skipped (recorded, with the reason).
"""

from __future__ import annotations

import random
import shlex
import time
from collections.abc import Callable
from typing import Any

from dynacheck.db import Cluster
from dynacheck.nemesis.effect import Observer
from dynacheck.nemesis.process import KillsNodes, minority
from dynactl.inventory import Host
from dynactl.remote import HostResult

#: The Berkeley DB files a corruption may hit, and how.
CORRUPT_TARGETS = ("records", "meta", "log", "any")
CORRUPT_MODES = ("bitflip", "truncate")


class Skipped(Exception):
    """The nemesis decided at run time not to do this fault; the message says why."""


class DataLoss:
    """The budget of lost copies shared by ``disk`` and ``corrupt``: at most one node's copies are
    lost between two points at which every key is known to be replicated again.

    Known replicated again: no node holds hinted keys, and every node has completed a whole
    anti-entropy sweep (every partition it replicates exchanged with every other replica of it)
    that began after the loss (``anti_entropy.coverage.last_sweep_began_ago``).

    The budget stands on an acknowledged write having ``w`` durable copies: with ``w`` = 1 a
    write acknowledged by one node (cut off by a partition, say) is on that node alone until it
    is replicated, and losing that node's copies loses it, as the configuration allows; no copy is
    lost then (``dynacheck sim --r 1 --w 1``, seed 8121: a write n2 acknowledged while partitioned
    was gone with n2's disk, and the run was called invalid)."""

    def __init__(self, cluster: Cluster, w: int, timeout: float = 2.0, clock: Callable[[], float] = time.monotonic):
        self.cluster = cluster
        #: Why no copy may ever be lost in this run (None: one node's at a time may).
        self.forbidden = (f"with W={w} an acknowledged write may have one copy only: no node's copies may be lost"
                          if w < 2 else None)
        self.timeout = timeout
        self.clock = clock
        #: When the last unrepaired loss was complete, and the nodes that lost copies since the
        #: cluster was last known fully replicated.
        self.lost_at: float | None = None
        self.lost_nodes: list[str] = []

    def statuses(self) -> dict[str, dict[str, Any] | str]:
        """Each node's ``/admin/status``, or why it did not answer."""
        return self.cluster.statuses(self.timeout)

    def check(self) -> None:
        """Raise ``Skipped`` unless a node may lose its copies now."""
        if self.forbidden is not None:
            raise Skipped(self.forbidden)
        if self.lost_at is None:
            return
        since_loss = self.clock() - self.lost_at  # taken before asking: the answers come later still
        reason = not_repaired_because(self.statuses(), since_loss)
        if reason is not None:
            raise Skipped(f"copies lost on {', '.join(self.lost_nodes)} are not known repaired: {reason}")
        self.lost_at, self.lost_nodes = None, []

    def lost(self, nodes: list[str]) -> None:
        """``nodes`` have just lost their copies (the damage is done)."""
        self.lost_at = self.clock()
        self.lost_nodes = sorted(set(self.lost_nodes) | set(nodes))


def not_repaired_because(statuses: dict[str, dict[str, Any] | str], since_loss: float) -> str | None:
    """Why the cluster is not known fully replicated since a loss ``since_loss`` seconds ago (None
    when it is), from every node's status (pure)."""
    for node, status in sorted(statuses.items()):
        if not isinstance(status, dict):
            return status
        coverage = (status.get("anti_entropy") or {}).get("coverage")
        if not coverage or "last_sweep_began_ago" not in coverage:
            return f"{node} does not report anti-entropy sweeps"
        if status.get("hinted_keys"):
            return f"{node} holds {status['hinted_keys']} hinted keys"
        began_ago = coverage["last_sweep_began_ago"]
        if began_ago is None or began_ago >= since_loss:
            return (f"{node} has not completed an anti-entropy sweep begun since the loss "
                    f"({coverage.get('pairs_exchanged')} of {coverage.get('pairs_total')} replica pairs exchanged "
                    "since it started)")
    return None


class CrashFault(KillsNodes):
    """kill -9 one node, damage its storage while it is down, start it again when the fault stops."""

    loses_copies = False

    def __init__(self, cluster: Cluster, losses: DataLoss, observer: Observer | None = None):
        super().__init__(cluster, observer)
        self.losses = losses

    def plan(self, rng: random.Random, avoid: frozenset[str] = frozenset()) -> dict[str, Any]:
        # One node at a time: a lost disk or a corrupt file must never take more than one copy.
        nodes = minority(self.cluster.ids, rng, avoid)[:1]
        return {"nodes": nodes, **self.plan_damage(rng)}

    def plan_damage(self, rng: random.Random) -> dict[str, Any]:
        return {}

    def damage(self, host: Host, value: dict[str, Any]) -> str:
        """The shell command that damages ``host``'s storage (the node is down)."""
        raise NotImplementedError

    def start(self, value: dict[str, Any]) -> dict[str, HostResult]:
        if self.loses_copies:
            self.losses.check()
        killed = self.kill(value["nodes"])
        down = [node for node, result in killed.items() if result.ok]
        damaged = self.cluster.run(lambda host: self.damage(host, value), down, timeout=120.0) if down else {}
        if self.loses_copies:
            self.losses.lost(value["nodes"])  # even when a step failed: the copies may be gone
        return {**killed, **damaged}

def data_dir(host: Host) -> str:
    return str(host.var("dynamod_data_dir"))


class DiskFault(CrashFault):
    """The node's disk is lost: its data dir is emptied (the directory itself stays, it may be a
    mount point)."""

    name = "disk"
    loses_copies = True

    def damage(self, host: Host, value: dict[str, Any]) -> str:
        directory = shlex.quote(data_dir(host))
        return f"mkdir -p {directory} && find {directory} -mindepth 1 -delete"


class CorruptFault(CrashFault):
    """Bits flipped in, or a truncation of, one Berkeley DB file of the node."""

    name = "corrupt"
    loses_copies = True

    def plan_damage(self, rng: random.Random) -> dict[str, Any]:
        return {"target": rng.choice(CORRUPT_TARGETS), "mode": rng.choice(CORRUPT_MODES),
                "flips": rng.choice((1, 8, 64)), "seed": rng.randrange(2**31)}

    def damage(self, host: Host, value: dict[str, Any]) -> str:
        return shlex.join([f"{host.venv}/bin/python", "-m", "dynacheck.nemesis.corruption", data_dir(host),
                           "--target", value["target"], "--mode", value["mode"], "--flips", str(value["flips"]),
                           "--seed", str(value["seed"])])


class PowerFault(CrashFault):
    """The node loses power: what it wrote without fsync is gone. Its data dir is a
    ``dynacheck.lazyfs`` mount over ``DATA_DIR.lazyfs`` for the whole run."""

    name = "power"

    def plan(self, rng: random.Random, avoid: frozenset[str] = frozenset()) -> dict[str, Any]:
        # Losing power loses no acknowledged copy, so a whole minority may lose it at once, and one
        # time in four the whole cluster does (a site's power cut: the case an fsync before every
        # acknowledgement exists for; the schedule lets it happen only while no other fault holds a node).
        if rng.random() < 0.25:
            return {"nodes": sorted(self.cluster.ids)}
        return {"nodes": minority(self.cluster.ids, rng, avoid)}

    @staticmethod
    def backing(host: Host) -> str:
        return data_dir(host).rstrip("/") + ".lazyfs"

    def prepare(self) -> dict[str, HostResult]:
        def mount(host: Host) -> str:
            backing, directory = shlex.quote(self.backing(host)), shlex.quote(data_dir(host))
            log = shlex.quote(f"{host.var('dynamod_log_dir')}/lazyfs.log")
            return (f"rm -rf {backing} && mkdir -p {backing} {directory} && "
                    + shlex.join(lazyfs_command(host, "mount", self.backing(host), data_dir(host),
                                              "--pidfile", f"{self.backing(host)}.pid"))
                    + f" --log {log}")
        return self.cluster.run(mount, timeout=60.0)

    def damage(self, host: Host, value: dict[str, Any]) -> str:
        return shlex.join(lazyfs_command(host, "crash", data_dir(host)))

    def release(self) -> dict[str, HostResult]:
        return self.cluster.run(lambda host: release_command(host), timeout=60.0)


def lazyfs_command(host: Host, *args: str) -> list[str]:
    """argv of ``python -m dynacheck.lazyfs ARGS`` with the host's venv."""
    return [f"{host.venv}/bin/python", "-m", "dynacheck.lazyfs", *args]


def release_command(host: Host) -> str:
    """Shell: unmount a lazyfs mount left on the node's data dir (by this run or a killed one)."""
    directory = shlex.quote(data_dir(host))
    unmount = shlex.join(lazyfs_command(host, "unmount", data_dir(host)))
    return f"if mountpoint -q {directory} 2>/dev/null; then {unmount} || umount -l {directory}; fi; true"
