"""Clock skew through libfaketime (Jepsen's clock nemesis): each node's wall clock reads an offset
from a timestamp file the node re-reads on every wall-clock read, so skew changes while it runs, at
once (the strobe flips it every 25-100 ms). Only wall time moves (lww timestamps, logs): the node's
timers and timed waits stay on the real monotonic clock, and the node runs as fast as without the
nemesis (``make bench-nemesis``). How the node is started: ``dynactl.service.faketime_environment``.
lww mode orders writes by these wall clocks.

Every change is checked (``dynacheck.nemesis.effect``): once the offsets are written (a bump), once
the strobe ends on its offset, and once a stop reset them, each node's wall clock as its
``/admin/status`` reports it must have moved as planned, measured from the offset the node showed
at set-up, every file at ``+0``; a node whose clock did not is that node's failed result.
"""

from __future__ import annotations

import math
import random
import shlex
from typing import Any

from dynacheck.db import Cluster
from dynacheck.nemesis import Fault
from dynacheck.nemesis.effect import ClockSample, Observer, observed
from dynactl.remote import HostResult

#: Bumps span milliseconds to minutes (log-uniform), either direction.
SMALLEST_BUMP, LARGEST_BUMP = 0.01, 300.0


class ClockFault(Fault):
    """``bump`` sets chosen nodes' clocks off by an offset; ``strobe`` flips them between the real
    time and an offset many times a second for a while; stopping resets every clock."""

    name = "clock"

    def __init__(self, cluster: Cluster, observer: Observer | None = None):
        super().__init__(cluster, observer)
        #: The offset each node's file holds (as far as this nemesis wrote it), and each node's clock
        #: against the checker's at set-up, while every file said +0.
        self.offsets: dict[str, float] = {}
        self.baseline: dict[str, ClockSample] = {}

    def setup(self) -> dict[str, HostResult]:
        results = {}
        for node, sample in self.observer.baseline(self.cluster.ids).items():
            if isinstance(sample, str):
                results[node] = HostResult(host=node, ok=False, error=f"reading its wall clock: {sample}")
                continue
            self.baseline[node] = sample
            results[node] = HostResult(host=node, ok=True, stdout=f"wall clock {sample.offset * 1000:+.1f} ms off the "
                                                                   f"checker's (±{sample.uncertainty * 1000:.1f} ms)")
        return results

    def plan(self, rng: random.Random) -> dict[str, Any]:
        nodes = self.cluster.ids
        chosen = sorted(rng.sample(nodes, rng.randint(1, len(nodes))))
        if rng.random() < 0.75:
            offsets = {node: round(rng.choice((-1, 1)) * math.exp(rng.uniform(math.log(SMALLEST_BUMP),
                                                                               math.log(LARGEST_BUMP))), 3)
                       for node in chosen}
            return {"mode": "bump", "offsets": offsets}
        return {"mode": "strobe", "nodes": chosen, "delta": round(rng.uniform(0.1, 10.0), 3),
                "period_ms": rng.choice((50, 100, 200)), "duration": rng.choice((1, 3, 5))}

    def start(self, value: dict[str, Any]) -> dict[str, HostResult]:
        if value["mode"] == "bump":
            return self._checked(self.cluster.set_clock_offsets(value["offsets"]), value["offsets"], "start")
        half_period = value["period_ms"] / 2000

        def strobe(host) -> str:
            clock = shlex.quote(self.cluster.faketime_file(host))
            # Runs on the host (one SSH round trip): flip until the deadline, then leave it skewed.
            return (f"end=$(( $(date +%s) + {int(value['duration'])} )); "
                    f"while [ $(date +%s) -lt $end ]; do printf '%+.3f\\n' {value['delta']} > {clock}; "
                    f"sleep {half_period}; printf '+0\\n' > {clock}; sleep {half_period}; done; "
                    f"printf '%+.3f\\n' {value['delta']} > {clock}")
        strobed = self.cluster.run(strobe, value["nodes"], timeout=value["duration"] + 30)
        return self._checked(strobed, dict.fromkeys(value["nodes"], value["delta"]), "start")

    def heal(self) -> dict[str, HostResult]:
        reset = dict.fromkeys(self.cluster.ids, 0.0)
        return self._checked(self.cluster.set_clock_offsets(reset), reset, "stop")

    def _checked(self, results: dict[str, HostResult], offsets: dict[str, float],
                 effect_of: str) -> dict[str, HostResult]:
        """``results`` of writing ``offsets``, with each written node's clock checked against them."""
        written = {node: offset for node, offset in offsets.items() if node in results and results[node].ok}
        previous = dict(self.offsets)
        self.offsets.update(written)
        return observed(results, self.observer.clocks(written, previous, self.baseline, effect_of))
