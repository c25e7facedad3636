"""Nemeses: faults injected on the nodes, each a ``Fault`` with a pure ``plan`` (what to break,
chosen with the test's seeded random source) and ``start``/``stop``/``heal`` that act on the hosts.

Every fault is recorded as ``start-<fault>`` and ``stop-<fault>`` nemesis ops. ``heal`` undoes
whatever a fault may have left behind and is safe to call any number of times: the runner calls
it for every fault at the end of the test and on interrupt or crash.
"""

from __future__ import annotations

import random
from typing import Any

from dynacheck.db import Cluster
from dynactl.remote import HostResult

#: Faults in ``--nemesis all`` and what each needs: "hosts" = separate network addresses.
FAULTS = ("partition", "clock", "kill", "pause", "netem")
NEEDS_HOSTS = frozenset({"partition", "netem"})
ALL = ("partition", "clock", "kill", "pause")


class Fault:
    """One kind of fault. ``plan`` must not touch the cluster; the others must not raise for one
    host's failure: they return a result per host."""

    name = "none"

    def __init__(self, cluster: Cluster):
        self.cluster = cluster

    def setup(self) -> dict[str, HostResult]:
        return {}

    def plan(self, rng: random.Random) -> Any:
        raise NotImplementedError

    def start(self, value: Any) -> dict[str, HostResult]:
        raise NotImplementedError

    def stop(self, value: Any) -> dict[str, HostResult]:
        return self.heal()

    def heal(self) -> dict[str, HostResult]:
        raise NotImplementedError

    def teardown(self) -> dict[str, HostResult]:
        return {}


def parse_nemesis(text: str, local: bool) -> tuple[str, ...]:
    """``none``, ``all`` or a comma-separated list of faults; raises ValueError with the reason."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    if names in ([], ["none"]):
        return ()
    chosen: list[str] = []
    for name in names:
        expanded = ALL if name == "all" else (name,)
        for fault in expanded:
            if fault not in FAULTS:
                raise ValueError(f"unknown nemesis {fault!r} (choose from none, all, {', '.join(FAULTS)})")
            if fault not in chosen:
                chosen.append(fault)
    if local:
        unsupported = [fault for fault in chosen if fault in NEEDS_HOSTS]
        if unsupported and names != ["all"]:
            raise ValueError(f"{', '.join(unsupported)} needs nodes with their own addresses (--testbed or "
                             "--nodes-file): every --local node shares 127.0.0.1")
        chosen = [fault for fault in chosen if fault not in NEEDS_HOSTS]
    return tuple(chosen)


def make_faults(names: tuple[str, ...], cluster: Cluster) -> dict[str, Fault]:
    """The Fault objects for ``names``."""
    from dynacheck.nemesis.clock import ClockFault
    from dynacheck.nemesis.network import NetemFault, PartitionFault
    from dynacheck.nemesis.process import KillFault, PauseFault
    kinds = {"partition": PartitionFault, "clock": ClockFault, "kill": KillFault, "pause": PauseFault,
             "netem": NetemFault}
    return {name: kinds[name](cluster) for name in names}


def results_document(results: dict[str, HostResult]) -> dict[str, str]:
    """Per node: ``ok`` or why not (what goes into the nemesis op's value)."""
    return {node: ("ok" if result.ok else result.error or "failed") for node, result in results.items()}
