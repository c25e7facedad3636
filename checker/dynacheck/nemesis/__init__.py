"""Nemeses: faults injected on the nodes, each a ``Fault`` with a pure ``plan`` (what to break,
chosen with the test's seeded random source) and ``start``/``stop``/``heal`` that act on the hosts.

Every fault is recorded as ``start-<fault>`` and ``stop-<fault>`` nemesis ops. ``heal`` undoes
whatever a fault may have left behind and is safe to call any number of times: the runner calls
it for every fault at the end of the test and on interrupt or crash. Faults that take nodes down
(kill, pause, disk, power, corrupt) say which in their plan's ``nodes``, so the schedule can keep
overlapping faults off each other's nodes and a majority up. ``membership`` changes the member list
(``dynacheck.nemesis.membership``); the other faults only take nodes the plan has made members.

A fault checks that it took effect where it can (``dynacheck.nemesis.effect``): a node where it was
seen to have none gets a failed result with the reason, so the op is never ``ok`` (``completion``).
"""

from __future__ import annotations

import random
from typing import Any

from dynacheck.db import Cluster
from dynacheck.history import INFO, OK
from dynacheck.nemeses import (  # noqa: F401 - the names and what they need are declared there
    ALL,
    COPY_LOSING,
    DEFAULT_SPARES,
    FAULTS,
    NEEDS_HOSTS,
    NEEDS_ROOT,
    parse_nemesis,
)
from dynacheck.nemesis.effect import Observed, Observer
from dynactl.remote import HostResult


class Fault:
    """One kind of fault. ``plan`` must not touch the cluster; the others must not raise for one
    host's failure: they return a result per host."""

    name = "none"
    #: True when the plan's ``nodes`` are down (or unreachable as nodes) while the fault lasts.
    takes_nodes = False

    def __init__(self, cluster: Cluster, observer: Observer | None = None):
        self.cluster = cluster
        self.observer = observer or Observer(cluster)  # how it sees whether it took effect

    def prepare(self) -> dict[str, HostResult]:
        """Before the nodes start (e.g. mount what their data dirs live on)."""
        return {}

    def setup(self) -> dict[str, HostResult]:
        """Once the nodes run, before the workload."""
        return {}

    def plan(self, rng: random.Random, avoid: frozenset[str] = frozenset()) -> Any:
        """What the next fault breaks, from ``rng`` alone; faults that take nodes keep off ``avoid``."""
        raise NotImplementedError

    def planned(self, value: Any) -> None:
        """The schedule kept ``value`` (one of this fault's plans): a fault whose plans depend on the
        ones before it (``membership``) moves its model on."""

    def start(self, value: Any) -> dict[str, HostResult]:
        raise NotImplementedError

    def stop(self, value: Any) -> dict[str, HostResult]:
        return self.heal()

    def heal(self) -> dict[str, HostResult]:
        raise NotImplementedError

    def teardown(self) -> dict[str, HostResult]:
        """After the run, while the nodes still run (remove rules and the like)."""
        return {}

    def release(self) -> dict[str, HostResult]:
        """After the nodes stopped (undo ``prepare``)."""
        return {}


def make_faults(names: tuple[str, ...], cluster: Cluster, w: int) -> dict[str, Fault]:
    """The Fault objects for ``names`` (``membership`` last: the final heal finishes its change once
    the other faults' heals have every member up); ``w``: the run's write quorum, which bounds the
    copies a fault may lose (``storage.DataLoss``)."""
    from dynacheck.nemesis.clock import ClockFault
    from dynacheck.nemesis.membership import MembershipFault
    from dynacheck.nemesis.network import NetemFault, PartitionFault
    from dynacheck.nemesis.process import KillFault, PauseFault
    from dynacheck.nemesis.storage import CorruptFault, DataLoss, DiskFault, PowerFault
    kinds = {"partition": PartitionFault, "clock": ClockFault, "kill": KillFault, "pause": PauseFault,
             "netem": NetemFault}
    losses = DataLoss(cluster, w)  # disk, corrupt and membership share one budget of lost copies
    storage = {"disk": DiskFault, "corrupt": CorruptFault, "power": PowerFault}
    ordered = sorted(names, key=lambda name: name == "membership")
    storage["membership"] = MembershipFault  # a replace or remove loses the dead node's copies too
    return {name: storage[name](cluster, losses) if name in storage else kinds[name](cluster) for name in ordered}


def results_document(results: dict[str, HostResult]) -> dict[str, str]:
    """Per node: ``ok`` or why not (what goes into the nemesis op's value)."""
    return {node: ("ok" if result.ok else result.error or "failed") for node, result in results.items()}


def completion(plan: Any, results: dict[str, HostResult]) -> dict[str, Any]:
    """A nemesis op's completion fields from its ``results``: ``ok`` only when every node's result is
    (a command that failed, or a fault seen to have no effect, makes it ``info`` with the reasons);
    ``value`` holds the plan, each node's outcome and, where the fault was looked at, what was seen."""
    failed = {node: result.error or "failed" for node, result in results.items() if not result.ok}
    value: dict[str, Any] = {"plan": plan, "nodes": results_document(results)}
    effects = {node: result.effect.document() for node, result in results.items()
               if isinstance(result, Observed) and result.effect is not None}
    if effects:
        value["effect"] = effects
    fields: dict[str, Any] = {"type": INFO if failed else OK, "value": value}
    if failed:
        fields["error"] = "; ".join(f"{node}: {why}" for node, why in failed.items())
    return fields


def not_undone(results: dict[str, HostResult]) -> list[str]:
    """The nodes (as result lines) where a stop did not undo its fault: its command failed, or the
    stop was seen to have no effect. A finding about the fault's own start (a killed node that
    something else restarted) is not the stop's failure."""
    def undone(result: HostResult) -> bool:
        if isinstance(result, Observed) and result.effect is not None and result.effect.effect_of == "start":
            return result.action_ok
        return result.ok
    return [result.line() for result in results.values() if not undone(result)]
