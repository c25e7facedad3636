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
        mode = rng.choice(PARTITION_MODES if len(self.cluster.ids) > 2 else ("one",))
        return {"mode": mode, "grudge": grudge(mode, self.cluster.ids, rng)}

    def start(self, value: dict[str, Any]) -> dict[str, HostResult]:
        addresses = {host.name: host.address for host in self.cluster.hosts}

        def rules(host: Host) -> str:
            commands = [f"iptables -w -F {CHAIN}"]
            commands += [f"iptables -w -A {CHAIN} -s {shlex.quote(addresses[other])} -j DROP"
                         for other in value["grudge"].get(host.name, [])]
            return " && ".join(commands)
        return self.cluster.run(rules)

    def heal(self) -> dict[str, HostResult]:
        return self.cluster.run(lambda host: f"iptables -w -F {CHAIN} 2>/dev/null || true")

    def teardown(self) -> dict[str, HostResult]:
        return self.cluster.run(lambda host: f"iptables -w -D INPUT -j {CHAIN} 2>/dev/null; iptables -w -F {CHAIN} "
                                             f"2>/dev/null; iptables -w -X {CHAIN} 2>/dev/null; true")


def _device_towards(address: str) -> str:
    """Shell: the network device a host uses to reach ``address``."""
    return f"$(ip -o -4 route get {shlex.quote(address)} | sed -n 's/.* dev \\([^ ]*\\).*/\\1/p')"


class NetemFault(Fault):
    """tc netem delay, jitter and loss on every node's interface towards its peers."""

    name = "netem"

    def _peer_address(self, host: Host) -> str:
        return next((other.address for other in self.cluster.hosts if other.name != host.name), host.address)

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
