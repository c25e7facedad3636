"""Process faults: kill -9 then restart, and pause (SIGSTOP) then resume (SIGCONT), through
``dynactl service`` on each host (it only ever signals the dynamod its pidfile names)."""

from __future__ import annotations

import random
from typing import Any

from dynacheck.nemesis import Fault
from dynactl.remote import HostResult


def minority(nodes: list[str], rng: random.Random, avoid: frozenset[str] = frozenset()) -> list[str]:
    """One node, or up to a minority of them (a majority stays up, so quorums remain possible),
    taken from those not in ``avoid`` when any are left."""
    most = max(1, (len(nodes) - 1) // 2)
    candidates = [node for node in nodes if node not in avoid] or list(nodes)
    return sorted(rng.sample(candidates, rng.randint(1, min(most, len(candidates)))))


class ServiceFault(Fault):
    """A fault made of two ``dynactl service`` actions on a minority of the nodes; healing runs
    the undoing action everywhere (a no-op where nothing is to undo)."""

    start_action = stop_action = ""
    takes_nodes = True

    def plan(self, rng: random.Random, avoid: frozenset[str] = frozenset()) -> dict[str, Any]:
        return {"nodes": minority(self.cluster.ids, rng, avoid)}

    def start(self, value: dict[str, Any]) -> dict[str, HostResult]:
        return self.cluster.service(self.start_action, value["nodes"])

    def stop(self, value: dict[str, Any]) -> dict[str, HostResult]:
        return self.cluster.service(self.stop_action, value["nodes"])

    def heal(self) -> dict[str, HostResult]:
        return self.cluster.service(self.stop_action)


class KillFault(ServiceFault):
    """kill -9 a minority; stopping restarts them (on the same data: crash recovery)."""

    name, start_action, stop_action = "kill", "kill", "start"


class PauseFault(ServiceFault):
    """SIGSTOP a minority: they hold connections open but answer nothing; stopping resumes them."""

    name, start_action, stop_action = "pause", "pause", "resume"
