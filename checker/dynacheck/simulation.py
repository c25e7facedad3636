"""A seeded discrete-event model of a *correct* Dynamo store, recording what its clients saw.

The history it writes has the format of :mod:`dynacheck.history` and every field the runner produces:

* a key lives on the first N nodes of its ring walk; a coordinator writes to the first N nodes it can
  reach (a sloppy quorum, Dynamo §4.6) and acknowledges once W of them hold the version; fallback
  copies are handed to the owners when a partition heals (hinted handoff, anti-entropy §4.7), and each
  node counts what it received, sent and handed off (its ``status`` snapshots);
* versions carry a dot and a clock (Dynamo §4.4 with dotted version vectors); a replica keeps the
  versions no version it holds has seen (syntactic reconciliation);
* the cart ``add`` reads R replicas, then writes the union of the siblings' items plus its own with
  the read's context (``read_clock``: the union of their clocks), so no acknowledged item is ever lost;
  the register ``write`` is blind;
* hot keys take most writes and reads; cold keys (``<workload>-cold-N``) get a few writes and no read
  before the final reads;
* the nemesis follows a planned ``fault_schedule``: partitions (which split the nodes), clock faults
  overlapping them (no effect on a vclock store), a disk fault it skips and a kill planned too late to
  start; the final heal stops every kind.

Pure: everything random comes from ``random.Random(seed)``; nothing touches the network or the clock.
"""

from __future__ import annotations

import heapq
import random
import zlib
from collections.abc import Callable
from typing import Any

from dynacheck.history import CONVERGENCE, FAIL, INFO, INVOKE, NEMESIS, OK, Op
from dynacheck.synthetic import MS, Dot, clock_contains, clock_json, clock_of, join_clocks

COLD_WRITES = 3  # a cold key takes up to this many writes


class _Version:
    __slots__ = ("dot", "clock", "elements", "wire")

    def __init__(self, dot: Dot, clock: Any, elements: frozenset[int]):
        self.dot, self.clock, self.elements = dot, clock, elements
        self.wire = {"dot": list(dot), "clock": clock_json(clock), "elements": sorted(elements)}


def _merge(siblings: dict[Dot, _Version], new: _Version) -> None:
    """Syntactic reconciliation: keep ``new`` unless a sibling has seen it; drop siblings it has seen."""
    if new.dot in siblings or any(clock_contains(s.clock, new.dot) for s in siblings.values()):
        return
    for dot in [dot for dot in siblings if clock_contains(new.clock, dot)]:
        del siblings[dot]
    siblings[new.dot] = new


class _Simulation:
    """The event loop, the replicas and the recorded ops of one simulated test."""

    def __init__(self, rng: random.Random, *, workload: str, ops: int, concurrency: int, nodes: list[str],
                 n: int, r: int, w: int, add_ratio: float, info_ratio: float, fail_ratio: float,
                 active_keys: int, key_limit: int | None, latency_ms: float, cold_ratio: float):
        self.rng, self.workload, self.budget, self.concurrency = rng, workload, ops, concurrency
        self.nodes, self.n, self.r, self.w = nodes, n, r, w
        self.add_ratio, self.info_ratio, self.fail_ratio = add_ratio, info_ratio, fail_ratio
        self.key_limit, self.latency_ms, self.cold_ratio = key_limit, latency_ms, cold_ratio
        self.replicas: dict[str, dict[str, dict[Dot, _Version]]] = {node: {} for node in nodes}
        self.counters: dict[tuple[str, str], int] = {}
        self.side = {node: 0 for node in nodes}
        self.keys: list[str] = []
        self.hot = 0
        self.cold: list[str] = []
        self.active = [self._new_key() for _ in range(active_keys)]
        self.writes: dict[str, int] = {}
        self.item = 0
        self.events: list[tuple[int, int, Callable[..., None], tuple[Any, ...]]] = []
        self.seq = 0
        self.ops: list[tuple[int, int, Op]] = []
        self.now = 0
        #: (remaining operations, action, fault, id) at which the nemesis acts, in order.
        self.faults: list[tuple[int, str, str, int]] = []
        #: Fault id -> what it did: its plan and the times its start and stop were invoked.
        self.done: dict[int, dict[str, Any]] = {}
        #: Per node: the anti-entropy and handoff counters its status snapshots report.
        self.stats = {node: {"exchanges": 0, "keys_received": 0, "keys_sent": 0, "handoffs": 0} for node in nodes}

    def _new_key(self) -> str:
        self.keys.append(f"{self.workload}-{self.hot}")
        self.hot += 1
        return self.keys[-1]

    def _cold_key(self) -> str:
        """The newest cold key while it takes writes, else a fresh one."""
        if not self.cold or self.writes.get(self.cold[-1], 0) >= self.rng.randint(1, COLD_WRITES):
            self.cold.append(f"{self.workload}-cold-{len(self.cold)}")
            self.keys.append(self.cold[-1])
        return self.cold[-1]

    def delay(self) -> int:
        return int((0.2 + self.rng.expovariate(1 / self.latency_ms)) * MS)

    def at(self, time: int, action: Callable[..., None], *args: Any) -> None:
        self.seq += 1
        heapq.heappush(self.events, (time, self.seq, action, args))

    def emit(self, time: int, **op: Any) -> None:
        self.seq += 1
        self.ops.append((time, self.seq, {"time": time, **op}))

    def run(self, until: int | None = None) -> None:
        while self.events and (until is None or self.events[0][0] <= until):
            time, _, action, args = heapq.heappop(self.events)
            # Time never runs backwards: an event due while a poll round was being recorded happens now.
            self.now = max(self.now, time)
            action(*args)

    # -- the store ---------------------------------------------------------------------------------
    def walk(self, key: str) -> list[str]:
        start = zlib.crc32(key.encode()) % len(self.nodes)
        return self.nodes[start:] + self.nodes[:start]

    def preference(self, key: str, via: str) -> list[str]:
        return [node for node in self.walk(key) if self.side[node] == self.side[via]][:self.n]

    def siblings(self, node: str, key: str) -> dict[Dot, _Version]:
        return self.replicas[node].setdefault(key, {})

    def read_replicas(self, key: str, via: str) -> list[_Version] | None:
        preference = self.preference(key, via)
        if len(preference) < self.r:
            return None
        merged: dict[Dot, _Version] = {}
        for node in self.rng.sample(preference, self.r):
            for sibling in self.siblings(node, key).values():
                _merge(merged, sibling)
        return sorted(merged.values(), key=lambda v: v.dot)

    def deliver(self, node: str, key: str, new: _Version, source: str) -> None:
        # Unreachable now: the heal's handoff merges every copy into the owners anyway.
        if self.side[node] == self.side[source]:
            _merge(self.siblings(node, key), new)

    def handoff(self, key: str) -> None:
        """Anti-entropy after a heal: every owner gets every copy; fallback copies are handed off and
        dropped. Owners count the keys they received (or sent), fallbacks their handoffs."""
        owners = self.walk(key)[:self.n]
        merged: dict[Dot, _Version] = {}
        held = {node: set(self.replicas[node].get(key, {})) for node in self.nodes}
        for node in self.nodes:
            for sibling in self.replicas[node].get(key, {}).values():
                _merge(merged, sibling)
            if node not in owners and self.replicas[node].pop(key, None) is not None:
                self.stats[node]["handoffs"] += 1
        for node in owners:
            self.stats[node]["exchanges"] += 1
            if held[node] != set(merged):
                self.stats[node]["keys_received"] += 1
            elif any(held[other] != set(merged) for other in owners):
                self.stats[node]["keys_sent"] += 1
            self.replicas[node][key] = dict(merged)

    # -- clients -----------------------------------------------------------------------------------
    def invoke(self, process: int) -> None:
        if self.budget <= 0:
            return
        self.budget -= 1
        while self.faults and self.budget <= self.faults[0][0]:
            self.nemesis(*self.faults.pop(0)[1:])
        key, node = self.rng.choice(self.active), self.rng.choice(self.nodes)
        common = {"process": process, "key": key, "node": node}
        if self.rng.random() < self.add_ratio:
            if self.cold_ratio and self.rng.random() < self.cold_ratio:
                key = common["key"] = self._cold_key()
            item, self.item = self.item, self.item + 1
            self.writes[key] = self.writes.get(key, 0) + 1
            if self.key_limit and key in self.active and self.writes[key] >= self.key_limit:
                self.active[self.active.index(key)] = self._new_key()
            f = "add" if self.workload == "cart" else "write"
            self.emit(self.now, type=INVOKE, f=f, value=item, **common)
            self.at(self.now + self.delay(), self.write_effect, common, f, item)
        else:
            self.emit(self.now, type=INVOKE, f="read", value=None, **common)
            self.at(self.now + self.delay(), self.read_effect, common)

    def complete(self, common: dict[str, Any], time: int, type_: str, **fields: Any) -> None:
        self.emit(time, type=type_, **common, **fields)
        process = common["process"] + (self.concurrency if type_ == INFO else 0)
        self.at(time, self.invoke, process)

    def read_effect(self, common: dict[str, Any]) -> None:
        siblings = self.read_replicas(common["key"], common["node"])
        done = self.now + self.delay()
        if siblings is None:
            self.complete(common, done, FAIL, f="read", value=None, error="unavailable")
            return
        value = sorted(set().union(*(v.elements for v in siblings)))
        self.complete(common, done, OK, f="read", value=value, versions=[v.wire for v in siblings])

    def write_effect(self, common: dict[str, Any], f: str, item: int) -> None:
        key, via = common["key"], common["node"]
        read = [] if f == "write" else self.read_replicas(key, via)
        roll = self.rng.random()
        if read is None or roll < self.fail_ratio:
            self.complete(common, self.now + self.delay(), FAIL, f=f, value=item, error="unavailable")
            return
        if roll < self.fail_ratio + self.info_ratio and self.rng.random() < 0.5:
            # Timed out before the coordinator stored anything.
            self.complete(common, self.now + 50 * MS, INFO, f=f, value=item, error="timeout")
            return
        preference = self.preference(key, via)
        coordinator = preference[0]
        counter = self.counters.get((coordinator, key), 0) + 1
        self.counters[coordinator, key] = counter
        dot = (f"{coordinator}~1.1", counter)
        past = clock_of([])
        for sibling in read:
            past = join_clocks(past, sibling.clock)
        elements = frozenset().union(*(v.elements for v in read)) | {item}
        new = _Version(dot, join_clocks(past, clock_of([dot])), elements)
        _merge(self.siblings(coordinator, key), new)
        arrivals = [self.now + self.delay() for _ in preference[1:]]
        for node, arrival in zip(preference[1:], arrivals, strict=True):
            self.at(arrival, self.deliver, node, key, new, coordinator)
        # Acknowledged once W replicas (the coordinator first) hold it.
        stored = sorted([self.now, *arrivals])[min(self.w, len(preference)) - 1]
        if roll < self.fail_ratio + self.info_ratio or len(preference) < self.w:
            self.complete(common, self.now + 50 * MS, INFO, f=f, value=item, error="timeout")
            return
        self.complete(common, stored + self.delay(), OK, f=f, value=item,
                      version={"dot": list(dot), "clock": new.wire["clock"]},
                      supersedes=[list(v.dot) for v in read], read_clock=clock_json(past))

    # -- nemesis and the end of the test -----------------------------------------------------------
    def plan(self, fault: str, id_: int) -> dict[str, Any]:
        """What fault ``id_`` breaks (drawn when the schedule is made, like the runner's plans)."""
        if fault == "partition":
            return {"id": id_, "isolated": self.rng.sample(self.nodes, (len(self.nodes) - 1) // 2)}
        return {"id": id_, "nodes": self.rng.sample(self.nodes, 1), "offset_ms": self.rng.randint(10, 300_000)}

    def nemesis(self, action: str, fault: str, id_: int, value: Any = None) -> None:
        """Start or stop planned fault ``id_`` (``value`` ``"heal"``: the final heal of ``fault``)."""
        f = f"{action}-{fault}"
        if value is None:
            value = self.done.setdefault(id_, {"fault": fault, "plan": self.plan(fault, id_)})["plan"]
        self.emit(self.now, process=NEMESIS, type=INVOKE, f=f, value=value)
        if value != "heal":
            self.done[id_][action] = self.now
        if fault == "disk" and action == "start":  # the nemesis declines it, as with an unrefilled wiped node
            reason = "the last wiped node is not refilled yet"
            self.emit(self.now + MS, process=NEMESIS, type=INFO, f=f, skipped=reason, error=f"skipped: {reason}")
            return
        if fault == "partition":
            minority = value["isolated"] if action == "start" else []
            self.side = {node: int(node in minority) for node in self.nodes}
            if action == "stop":
                for key in self.keys:
                    self.at(self.now + self.rng.randint(10, 600) * MS, self.handoff, key)
        # What was done per node; nothing for a heal or for the stop of the skipped disk fault.
        acted = [] if value == "heal" or fault == "disk" else value.get("nodes", self.nodes)
        self.emit(self.now + MS, process=NEMESIS, type=OK, f=f,
                  value={"plan": value, "nodes": dict.fromkeys(acted, "ok")})

    def status(self, phase: str, time: int) -> int:
        """Every node's status snapshot (``phase`` before or after the polls); returns the time after."""
        for node in self.nodes:
            common = {"process": CONVERGENCE, "f": "status", "node": node, "phase": phase}
            stats = self.stats[node]
            owners = {key: self.walk(key)[:self.n] for key, held in self.replicas[node].items() if held}
            value = {"anti_entropy": {"exchanges": stats["exchanges"], "keys_received": stats["keys_received"],
                                      "keys_sent": stats["keys_sent"], "partitions_in_sync": stats["exchanges"]
                                      - stats["keys_received"],
                                      "coverage": {"pairs_exchanged": min(stats["exchanges"], len(self.nodes) - 1),
                                                   "pairs_total": len(self.nodes) - 1}},
                     "hinted_keys": sum(node not in owners[key] for key in owners), "handoffs": stats["handoffs"]}
            self.emit(time, type=INVOKE, **common)
            self.emit(time + MS // 10, type=OK, value=value, **common)
            time += MS // 5
        return time

    def poll_round(self, round_: int, time: int) -> list[Op]:
        ops = []
        for key in self.keys:
            for node in self.nodes:
                self.run(until=time)  # each poll sees the replica as it is at its own time
                common = {"process": CONVERGENCE, "f": "replica", "round": round_, "key": key, "node": node}
                value = [{**v.wire, "deleted": False} for v in self.replicas[node].get(key, {}).values()]
                ops += [{"time": time, "type": INVOKE, "value": None, **common},
                        {"time": time + MS // 10, "type": OK, "value": value, **common}]
                time += MS // 5
        for op in ops:
            self.emit(op["time"], **{k: v for k, v in op.items() if k != "time"})
        return ops


def _schedule(ops: int, partitions: int, overlap: bool) -> list[tuple[int, str, str, int]]:
    """The nemesis's cues, ``(remaining operations, action, fault, id)`` in order: faults start and stop
    when given shares of the operations have been issued, whatever the timing. The last partition is
    still in place when the clients stop; a clock fault starts inside each earlier partition and ends
    after it, and a disk fault (to be skipped) sits between the first two."""
    cues: list[tuple[float, str, str, int]] = []
    length = 1 / (3 * (2 * partitions + 1)) if partitions else 0
    for i in range(partitions):
        start = (2 * i + 1) / (2 * partitions + 1) if i < partitions - 1 else 1 - length
        cues.append((start, "start", "partition", len(cues)))
        if i < partitions - 1:
            cues.append((start + length, "stop", "partition", cues[-1][3]))
            if overlap:
                cues += [(start + length / 2, "start", "clock", len(cues)), (start + 1.5 * length, "stop", "clock",
                                                                            len(cues))]
        if overlap and i == 0 and partitions > 1:
            cues += [(start + 2 * length, "start", "disk", len(cues)), (start + 2.5 * length, "stop", "disk",
                                                                       len(cues))]
    return sorted(((int(ops * (1 - share)), action, fault, id_) for share, action, fault, id_ in cues),
                  key=lambda cue: -cue[0])


def generate(ops: int = 2_000, *, seed: int = 0, workload: str = "cart", concurrency: int = 10,
             nodes: int = 5, n: int = 3, r: int = 2, w: int = 2, add_ratio: float = 0.7,
             info_ratio: float = 0.01, fail_ratio: float = 0.005, active_keys: int = 8,
             key_limit: int | None = 250, partitions: int = 3, latency_ms: float = 1.5,
             cold_ratio: float = 0.01, overlap: bool = True, quiet_margin: float = 3.0
             ) -> tuple[dict[str, Any], list[Op]]:
    """Simulate a test of ``ops`` client operations against a correct store; returns ``(test, history)``.

    Keys rotate like Jepsen's independent keys: after ``key_limit`` writes a key is retired and a fresh
    one joins the ``active_keys`` in use (register keys keep every blind write as a sibling, and the
    simulation slows quadratically with siblings: keep their ``key_limit`` small); a ``cold_ratio`` of
    the writes go to cold keys. ``partitions`` faults are spread over the run (with ``overlap``, clock
    faults overlapping them and a skipped disk fault too); the last is still in place when the clients
    stop, so the heal, status snapshots, convergence polls, status snapshots again and final reads follow.
    """
    from dynacheck.checkers.convergence import round_verdict  # the runner's own stopping rule

    rng = random.Random(seed)
    ids = [f"n{i}" for i in range(1, nodes + 1)]
    sim = _Simulation(rng, workload=workload, ops=ops, concurrency=concurrency, nodes=ids, n=n, r=r, w=w,
                      add_ratio=add_ratio, info_ratio=info_ratio, fail_ratio=fail_ratio,
                      active_keys=active_keys, key_limit=key_limit, latency_ms=latency_ms, cold_ratio=cold_ratio)
    sim.faults = _schedule(ops, partitions, overlap)
    kinds = sorted({fault for _, _, fault, _ in sim.faults})
    for process in range(concurrency):
        sim.at(process * MS // 10, sim.invoke, process)
    sim.run()
    processes = sorted({op["process"] for _, _, op in sim.ops if isinstance(op["process"], int)}
                       - {op["process"] for _, _, op in sim.ops if op["type"] == INFO}) or list(range(concurrency))
    workload_end = sim.now
    sim.now += 100 * MS
    heal = sim.now
    planned_kinds = kinds + ["kill"] * (overlap and bool(kinds))  # a kill is planned, too late to start
    for fault in planned_kinds:
        sim.nemesis("stop", fault, -1, value="heal")  # the runner's heal stops every kind
    sim.now = sim.status("before", sim.now + 2 * MS)
    replicas_needed = min(n, nodes)
    for round_ in range(1, 50):
        until = sim.now + 150 * MS
        sim.run(until=until)
        sim.now = until
        polled = sim.poll_round(round_, sim.now)
        sim.now = polled[-1]["time"] + MS if polled else sim.now
        if all(round_verdict(polled, replicas_needed).values()):
            break
    sim.run()
    sim.now = sim.status("after", sim.now + MS)
    # Final reads once the quiet margin after the heal has passed, as the runner's quiesce waits.
    time = max(sim.now + 10 * MS, heal + int(quiet_margin * 1e9) + 10 * MS)
    for i, (key, node) in enumerate((key, node) for key in sim.keys for node in ids):
        common = {"process": processes[i % len(processes)], "key": key, "node": node, "final": True}
        merged: dict[Dot, _Version] = {}
        for replica in sim.preference(key, node)[:r]:
            for sibling in sim.siblings(replica, key).values():
                _merge(merged, sibling)
        siblings = sorted(merged.values(), key=lambda v: v.dot)
        sim.emit(time, type=INVOKE, f="read", value=None, **common)
        sim.emit(time + MS // 2, type=OK, f="read", value=sorted(set().union(*(v.elements for v in siblings))),
                 versions=[v.wire for v in siblings], **common)
        time += MS
    history = [{"index": i, **op} for i, (_, _, op) in enumerate(sorted(sim.ops, key=lambda o: o[:2]))]
    test = {"name": f"synthetic-{workload}", "workload": workload, "mode": "vclock", "n": n, "r": r, "w": w,
            "nodes": ids, "keys": list(sim.keys), "concurrency": concurrency,
            "nemesis": planned_kinds,
            "quiet_margin": quiet_margin, "fault_schedule": _planned(sim, rng, workload_end, overlap),
            "time_limit": round(history[-1]["time"] / 1e9, 3) if history else 0,
            "synthetic": {"ops": ops, "seed": seed}}
    return test, history


def _planned(sim: _Simulation, rng: random.Random, workload_end: int, overlap: bool) -> list[dict[str, Any]]:
    """The schedule as test.json keeps it: each fault's plan and planned times (a few ms before the
    nemesis got to it), and, with ``overlap``, a kill planned too close to the end to start."""
    schedule = []
    for id_, done in sorted(sim.done.items()):
        start = done["start"] - rng.randint(0, 20) * MS
        stop = done.get("stop", workload_end) - rng.randint(0, 20) * MS
        schedule.append({"id": id_, "fault": done["fault"], "start": start, "stop": max(start, stop),
                         "plan": done["plan"]})
    if overlap and schedule:
        late = max(sim.done) + 1
        schedule.append({"id": late, "fault": "kill", "start": workload_end + 500 * MS,
                         "stop": workload_end + 900 * MS, "plan": {"id": late, "nodes": ["n1"]}})
    return sorted(schedule, key=lambda fault: (fault["start"], fault["id"]))
