"""Clock skew through libfaketime (Jepsen's clock nemesis): each node's wall clock reads an offset
from a timestamp file the node re-reads on every wall-clock read, so skew changes while it runs, at
once (the strobe flips it every 25-100 ms). Only wall time moves (lww timestamps, logs): the node's
timers and timed waits stay on the real monotonic clock, and the node runs as fast as without the
nemesis (``make bench-nemesis``). How the node is started: ``dynactl.service.faketime_environment``.
lww mode orders writes by these wall clocks.
"""

from __future__ import annotations

import math
import random
import shlex
from typing import Any

from dynacheck.nemesis import Fault
from dynactl.remote import HostResult

#: Bumps span milliseconds to minutes (log-uniform), either direction.
SMALLEST_BUMP, LARGEST_BUMP = 0.01, 300.0


class ClockFault(Fault):
    """``bump`` sets chosen nodes' clocks off by an offset; ``strobe`` flips them between the real
    time and an offset many times a second for a while; stopping resets every clock."""

    name = "clock"

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
            return self.cluster.set_clock_offsets(value["offsets"])
        half_period = value["period_ms"] / 2000

        def strobe(host) -> str:
            clock = shlex.quote(self.cluster.faketime_file(host))
            # Runs on the host (one SSH round trip): flip until the deadline, then leave it skewed.
            return (f"end=$(( $(date +%s) + {int(value['duration'])} )); "
                    f"while [ $(date +%s) -lt $end ]; do printf '%+.3f\\n' {value['delta']} > {clock}; "
                    f"sleep {half_period}; printf '+0\\n' > {clock}; sleep {half_period}; done; "
                    f"printf '%+.3f\\n' {value['delta']} > {clock}")
        return self.cluster.run(strobe, value["nodes"], timeout=value["duration"] + 30)

    def heal(self) -> dict[str, HostResult]:
        return self.cluster.set_clock_offsets({node: 0.0 for node in self.cluster.ids})
