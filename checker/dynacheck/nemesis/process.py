"""Process faults: kill -9 then restart, and pause (SIGSTOP) then resume (SIGCONT), through
``dynactl service`` on each host (it only ever signals the dynamod its pidfile names)."""

from __future__ import annotations

import random
from typing import Any

from dynacheck.nemesis import Fault
from dynactl.remote import HostResult


def minority(nodes: list[str], rng: random.Random) -> list[str]:
    """One node, or up to a minority of them (a majority stays up, so quorums remain possible)."""
    most = max(1, (len(nodes) - 1) // 2)
    return sorted(rng.sample(nodes, rng.randint(1, most)))


class KillFault(Fault):
    """kill -9 a minority; stopping restarts them (on the same data: crash recovery)."""

    name = "kill"

    def plan(self, rng: random.Random) -> dict[str, Any]:
        return {"nodes": minority(self.cluster.ids, rng)}

    def start(self, value: dict[str, Any]) -> dict[str, HostResult]:
        return self.cluster.service("kill", value["nodes"])

    def stop(self, value: dict[str, Any]) -> dict[str, HostResult]:
        return self.cluster.service("start", value["nodes"])

    def heal(self) -> dict[str, HostResult]:
        return self.cluster.service("start")  # a no-op on nodes that run


class PauseFault(Fault):
    """SIGSTOP a minority: they hold connections open but answer nothing; stopping resumes them."""

    name = "pause"

    def plan(self, rng: random.Random) -> dict[str, Any]:
        return {"nodes": minority(self.cluster.ids, rng)}

    def start(self, value: dict[str, Any]) -> dict[str, HostResult]:
        return self.cluster.service("pause", value["nodes"])

    def stop(self, value: dict[str, Any]) -> dict[str, HostResult]:
        return self.cluster.service("resume", value["nodes"])

    def heal(self) -> dict[str, HostResult]:
        return self.cluster.service("resume")
