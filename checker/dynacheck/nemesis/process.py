"""Process faults: kill -9 then restart, and pause (SIGSTOP) then resume (SIGCONT), through
``dynactl service`` on each host (it only ever signals the dynamod its pidfile names). Each checks
that it took effect (``dynacheck.nemesis.effect``): a killed node must still be down when the stop
starts it again, a paused node must not answer."""

from __future__ import annotations

import random
from typing import Any

from dynacheck.db import Cluster
from dynacheck.nemesis import Fault
from dynacheck.nemesis.effect import KilledNodes, Observer, observed
from dynactl.remote import HostResult


def minority(nodes: list[str], rng: random.Random, avoid: frozenset[str] = frozenset()) -> list[str]:
    """One node, or up to a minority of them (a majority stays up, so quorums remain possible),
    taken from those not in ``avoid`` when any are left."""
    most = max(1, (len(nodes) - 1) // 2)
    candidates = [node for node in nodes if node not in avoid] or list(nodes)
    return sorted(rng.sample(candidates, rng.randint(1, min(most, len(candidates)))))


class MinorityFault(Fault):
    """A fault that takes a minority of the nodes down (``minority``)."""

    takes_nodes = True

    def plan(self, rng: random.Random, avoid: frozenset[str] = frozenset()) -> dict[str, Any]:
        return {"nodes": minority(self.cluster.ids, rng, avoid)}


class KillsNodes(MinorityFault):
    """A fault that kill -9s nodes and starts them again when it stops, once it has checked that
    each stayed down (``KilledNodes``: a node something else restarted is that node's failed result);
    healing starts every member."""

    def __init__(self, cluster: Cluster, observer: Observer | None = None):
        super().__init__(cluster, observer)
        self.down = KilledNodes(cluster, self.observer)

    def kill(self, nodes: list[str]) -> dict[str, HostResult]:
        killed = self.cluster.service("kill", nodes)
        self.down.killed(killed)
        return killed

    def stop(self, value: dict[str, Any]) -> dict[str, HostResult]:
        return self.down.start(value["nodes"])

    def heal(self) -> dict[str, HostResult]:
        return self.down.start()


class KillFault(KillsNodes):
    """kill -9 a minority; stopping restarts them (on the same data: crash recovery)."""

    name = "kill"

    def start(self, value: dict[str, Any]) -> dict[str, HostResult]:
        return self.kill(value["nodes"])


class PauseFault(MinorityFault):
    """SIGSTOP a minority: they hold connections open but answer nothing (checked: each must stay
    silent for ``PROBE_TIMEOUT``); stopping resumes them (SIGCONT), healing resumes every member
    (a no-op where none is paused)."""

    name = "pause"

    def start(self, value: dict[str, Any]) -> dict[str, HostResult]:
        paused = self.cluster.service("pause", value["nodes"])
        return observed(paused, self.observer.paused([node for node, result in paused.items() if result.ok]))

    def stop(self, value: dict[str, Any]) -> dict[str, HostResult]:
        return self.cluster.service("resume", value["nodes"])

    def heal(self) -> dict[str, HostResult]:
        return self.cluster.service("resume")
