"""Network faults on the hosts: partitions with iptables, delay and loss with tc netem (Jepsen's
``partition-random-halves``, ``partition-random-node``, ``partition-majorities-ring``, ``bridge``).

A partition is a *grudge*: for each node, the nodes whose packets it drops. Rules live in a chain of
our own (``dynacheck``) jumped to from INPUT, so healing is one flush and teardown removes only ours.
The checker's own traffic (the control host) is never dropped: clients still reach every node.
"""

from __future__ import annotations

import random
import shlex
from typing import Any

from dynacheck.nemesis import Fault
from dynactl.inventory import Host
from dynactl.remote import HostResult

CHAIN = "dynacheck"
PARTITION_MODES = ("halves", "one", "majorities-ring", "bridge")


def grudge(mode: str, nodes: list[str], rng: random.Random) -> dict[str, list[str]]:
    """Who drops whom for a partition ``mode`` over ``nodes`` (pure)."""
    shuffled = list(nodes)
    rng.shuffle(shuffled)
    size = len(shuffled)
    if mode == "one":
        return _apart([shuffled[:1], shuffled[1:]])
    if mode == "halves":
        return _apart([shuffled[:size // 2], shuffled[size // 2:]])
    if mode == "bridge":
        # Two halves that cannot talk, and one node in the middle that talks to both.
        middle, left, right = shuffled[0], shuffled[1:1 + (size - 1) // 2], shuffled[1 + (size - 1) // 2:]
        result = _apart([left, right])
        result[middle] = []
        return result
    if mode == "majorities-ring":
        # Each node sees a majority made of itself and its nearest ring neighbours; no two see the same.
        majority = size // 2 + 1
        result = {}
        for index, node in enumerate(shuffled):
            offsets = range(-(majority // 2), majority - majority // 2)
            visible = {shuffled[(index + offset) % size] for offset in offsets}
            result[node] = sorted(set(shuffled) - visible)
        return result
    raise ValueError(f"unknown partition mode {mode!r}")


def _apart(components: list[list[str]]) -> dict[str, list[str]]:
    everyone = [node for component in components for node in component]
    return {node: sorted(other for other in everyone if other not in component)
            for component in components for node in component}


class PartitionFault(Fault):
    """iptables DROP of the packets from the nodes each node holds a grudge against."""

    name = "partition"

    def setup(self) -> dict[str, HostResult]:
        return self.cluster.run(lambda host: f"iptables -w -N {CHAIN} 2>/dev/null; iptables -w -F {CHAIN} && "
                                             f"(iptables -w -C INPUT -j {CHAIN} 2>/dev/null || "
                                             f"iptables -w -I INPUT 1 -j {CHAIN})")

    def plan(self, rng: random.Random) -> dict[str, Any]:
        count = len(self.cluster.ids)
        # Below 5 nodes a majorities ring's one-way drops cut every TCP link: not what it claims.
        modes = [mode for mode in PARTITION_MODES if count >= 5 or mode != "majorities-ring"] if count > 2 else ["one"]
        mode = rng.choice(modes)
        return {"mode": mode, "grudge": grudge(mode, self.cluster.ids, rng)}

    def start(self, value: dict[str, Any]) -> dict[str, HostResult]:
        # Every host of the run: a node the plan names may have left (or joined) since it was planned.
        addresses = {host.name: peer_address(host) for host in self.cluster.roster}

        def rules(host: Host) -> str:
            commands = [f"iptables -w -F {CHAIN}"]
            commands += [f"iptables -w -A {CHAIN} -s {shlex.quote(addresses[other])} -j DROP"
                         for other in value["grudge"].get(host.name, []) if other in addresses]
            return " && ".join(commands)
        return self.cluster.run(rules)

    def heal(self) -> dict[str, HostResult]:
        # Fine when there is no chain (nothing to heal); a flush that fails on a chain is an error.
        return self.cluster.run(lambda host: f"iptables -w -F {CHAIN} 2>/dev/null || "
                                             f"! iptables -w -n -L {CHAIN} >/dev/null 2>&1")

    def teardown(self) -> dict[str, HostResult]:
        return self.cluster.run(lambda host: f"iptables -w -D INPUT -j {CHAIN} 2>/dev/null; iptables -w -F {CHAIN} "
                                             f"2>/dev/null; iptables -w -X {CHAIN} 2>/dev/null; true")


def peer_address(host: Host) -> str:
    """The address a node's peers reach it at (where its peer traffic comes from)."""
    return host.peer.rpartition(":")[0]


def _device_towards(address: str) -> str:
    """Shell: the network device a host uses to reach ``address``."""
    return f"$(ip -o -4 route get {shlex.quote(address)} | sed -n 's/.* dev \\([^ ]*\\).*/\\1/p')"


class NetemFault(Fault):
    """tc netem delay, jitter and loss on every node's interface towards its peers."""

    name = "netem"

    def _peer_address(self, host: Host) -> str:
        return next((peer_address(other) for other in self.cluster.hosts if other.name != host.name),
                    peer_address(host))

    def plan(self, rng: random.Random) -> dict[str, Any]:
        return {"delay_ms": rng.choice((20, 50, 100, 200)), "jitter_ms": rng.choice((5, 20, 50)),
                "loss_percent": rng.choice((0, 1, 5, 10))}

    def start(self, value: dict[str, Any]) -> dict[str, HostResult]:
        return self.cluster.run(lambda host: (
            f"tc qdisc replace dev {_device_towards(self._peer_address(host))} root netem "
            f"delay {int(value['delay_ms'])}ms {int(value['jitter_ms'])}ms loss {float(value['loss_percent']):g}%"))

    def heal(self) -> dict[str, HostResult]:
        return self.cluster.run(lambda host: f"tc qdisc del dev {_device_towards(self._peer_address(host))} root "
                                             "2>/dev/null || true")
