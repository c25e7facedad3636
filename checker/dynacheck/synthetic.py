"""Synthetic histories for the checkers' tests and benchmark: hand-written ones and simulated ones.

``HistoryBuilder`` writes small histories op by op (times in ms) so tests read like behaviour.
``generate`` runs a seeded discrete-event model of a *correct* Dynamo store and records what its
clients saw, in the format of :mod:`dynacheck.history`:

* a key lives on the first N nodes of its ring walk; a coordinator writes to the first N nodes it can
  reach (a sloppy quorum, Dynamo §4.6) and acknowledges once W of them hold the version; fallback
  copies are handed to the owners when a partition heals (hinted handoff, anti-entropy §4.7);
* versions carry a dot and a clock (Dynamo §4.4 with dotted version vectors); a replica keeps the
  versions no version it holds has seen (syntactic reconciliation);
* the cart ``add`` reads R replicas, then writes the union of the siblings' items plus its own with
  the read's context, so no acknowledged item is ever lost; the register ``write`` is blind.

Pure: everything random comes from ``random.Random(seed)``; nothing touches the network or the clock.
"""

from __future__ import annotations

import heapq
import random
import zlib
from collections.abc import Callable, Iterable
from typing import Any

from dynacheck.history import CONVERGENCE, FAIL, INFO, INVOKE, NEMESIS, OK, Op

Dot = tuple[str, int]
Clock = tuple[dict[str, int], frozenset[Dot]]
MS = 1_000_000


def clock_of(dots: Iterable[Dot]) -> Clock:
    """The normalised clock holding exactly ``dots``: contiguous counters fold into the vector."""
    return _normalise({}, frozenset(dots))


def clock_json(clock: Clock) -> dict[str, Any]:
    """A clock in the history's shape: ``{"vector": {actor: n}, "cloud": [[actor, n], ...]}``."""
    vector, cloud = clock
    return {"vector": dict(vector), "cloud": [list(dot) for dot in sorted(cloud)]}


def _normalise(vector: dict[str, int], cloud: frozenset[Dot]) -> Clock:
    merged = dict(vector)
    remaining = {dot for dot in cloud if dot[1] > merged.get(dot[0], 0)}
    for dot in sorted(remaining):
        if dot[1] == merged.get(dot[0], 0) + 1:
            merged[dot[0]] = dot[1]
            remaining.discard(dot)
    return merged, frozenset(remaining)


def _join(a: Clock, b: Clock) -> Clock:
    vector = dict(a[0])
    for actor, n in b[0].items():
        if n > vector.get(actor, 0):
            vector[actor] = n
    return _normalise(vector, a[1] | b[1])


def _contains(clock: Clock, dot: Dot) -> bool:
    return dot[1] <= clock[0].get(dot[0], 0) or dot in clock[1]


class HistoryBuilder:
    """Builds a history by hand: each call appends an invoke and its completion at the given times (ms)."""

    def __init__(self) -> None:
        self._ops: list[tuple[float, int, Op]] = []

    def _op(self, at_ms: float, **fields: Any) -> None:
        self._ops.append((at_ms, len(self._ops), {"time": int(at_ms * MS), **fields}))

    def add(self, process: int, key: str, element: int, invoke_ms: float, done_ms: float | None = None,
            outcome: str = OK, dot: Dot | None = None, seen: Iterable[Dot] = (),
            supersedes: Iterable[Dot] = (), f: str = "add", node: str = "n1") -> None:
        """An add (or ``f="write"``); when ``ok`` it created version ``dot`` whose clock is ``seen`` plus
        ``dot``, superseding ``supersedes``. ``done_ms=None`` leaves it without a completion."""
        common = {"process": process, "f": f, "key": key, "value": element, "node": node}
        self._op(invoke_ms, type=INVOKE, **common)
        if done_ms is None:
            return
        extra: dict[str, Any] = {}
        if outcome == OK and dot is not None:
            extra["version"] = {"dot": list(dot), "clock": clock_json(clock_of([*seen, dot]))}
            extra["supersedes"] = [list(d) for d in supersedes]
        self._op(done_ms, type=outcome, **common, **extra)

    def read(self, process: int, key: str, elements: Iterable[int], invoke_ms: float, done_ms: float,
             versions: list[dict[str, Any]] | None = None, final: bool = False, node: str = "n1",
             outcome: str = OK) -> None:
        """A read that returned ``elements`` (and ``versions``, see :func:`version`) when ``ok``."""
        common: dict[str, Any] = {"process": process, "f": "read", "key": key, "node": node}
        if final:
            common["final"] = True
        self._op(invoke_ms, type=INVOKE, value=None, **common)
        extra: dict[str, Any] = {}
        if outcome == OK:
            extra = {"value": sorted(elements), "versions": versions or []}
        self._op(done_ms, type=outcome, **common, **extra)

    def nemesis(self, f: str, invoke_ms: float, done_ms: float) -> None:
        """A nemesis op such as ``start-partition``."""
        self._op(invoke_ms, process=NEMESIS, type=INVOKE, f=f, value=None)
        self._op(done_ms, process=NEMESIS, type=OK, f=f, value=None)

    def poll(self, round_: int, key: str, node: str, siblings: list[dict[str, Any]] | None, at_ms: float,
             done_ms: float | None = None) -> None:
        """One convergence poll of ``key`` on ``node``; ``siblings=None`` makes it fail."""
        common = {"process": CONVERGENCE, "f": "replica", "round": round_, "key": key, "node": node}
        self._op(at_ms, type=INVOKE, value=None, **common)
        done = at_ms + 1 if done_ms is None else done_ms
        if siblings is None:
            self._op(done, type=FAIL, value=None, error="timeout", **common)
        else:
            self._op(done, type=OK, value=[{"deleted": False, **s} for s in siblings], **common)

    def history(self) -> list[Op]:
        """The ops in time order (ties keep insertion order), numbered. Raises ValueError when a client
        process invokes again before its previous op completed (histories pair ops by process)."""
        ops = [{"index": i, **op} for i, (_, _, op) in enumerate(sorted(self._ops, key=lambda o: o[:2]))]
        busy: set[int] = set()
        for op in ops:
            if isinstance(op.get("process"), int):
                if op["type"] == INVOKE and op["process"] in busy:
                    raise ValueError(f"process {op['process']} invoked at {op['time'] / MS} ms while busy")
                (busy.add if op["type"] == INVOKE else busy.discard)(op["process"])
        return ops


def version(dot: Dot, elements: Iterable[int], seen: Iterable[Dot] = ()) -> dict[str, Any]:
    """A sibling as reads and polls report it: ``{"dot", "clock", "elements"}``."""
    return {"dot": list(dot), "clock": clock_json(clock_of([*seen, dot])), "elements": sorted(elements)}


class _Version:
    __slots__ = ("dot", "clock", "elements", "wire")

    def __init__(self, dot: Dot, clock: Clock, elements: frozenset[int]):
        self.dot, self.clock, self.elements = dot, clock, elements
        self.wire = {"dot": list(dot), "clock": clock_json(clock), "elements": sorted(elements)}


def _merge(siblings: dict[Dot, _Version], new: _Version) -> None:
    """Syntactic reconciliation: keep ``new`` unless a sibling has seen it; drop siblings it has seen."""
    if new.dot in siblings or any(_contains(s.clock, new.dot) for s in siblings.values()):
        return
    for dot in [dot for dot in siblings if _contains(new.clock, dot)]:
        del siblings[dot]
    siblings[new.dot] = new


class _Simulation:
    """The event loop, the replicas and the recorded ops of one simulated test."""

    def __init__(self, rng: random.Random, *, workload: str, ops: int, concurrency: int, nodes: list[str],
                 n: int, r: int, w: int, add_ratio: float, info_ratio: float, fail_ratio: float,
                 active_keys: int, key_limit: int | None, latency_ms: float):
        self.rng, self.workload, self.budget, self.concurrency = rng, workload, ops, concurrency
        self.nodes, self.n, self.r, self.w = nodes, n, r, w
        self.add_ratio, self.info_ratio, self.fail_ratio = add_ratio, info_ratio, fail_ratio
        self.key_limit, self.latency_ms = key_limit, latency_ms
        self.replicas: dict[str, dict[str, dict[Dot, _Version]]] = {node: {} for node in nodes}
        self.counters: dict[tuple[str, str], int] = {}
        self.side = {node: 0 for node in nodes}
        self.keys: list[str] = []
        self.active = [self._new_key() for _ in range(active_keys)]
        self.writes: dict[str, int] = {}
        self.item = 0
        self.events: list[tuple[int, int, Callable[..., None], tuple[Any, ...]]] = []
        self.seq = 0
        self.ops: list[tuple[int, int, Op]] = []
        self.now = 0
        #: (remaining operations, start?) at which the nemesis acts, in order.
        self.faults: list[tuple[int, bool]] = []

    def _new_key(self) -> str:
        self.keys.append(f"{self.workload}-{len(self.keys)}")
        return self.keys[-1]

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
            self.now, _, action, args = heapq.heappop(self.events)
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
        """Anti-entropy after a heal: every owner gets every copy; fallback copies are dropped."""
        owners = self.walk(key)[:self.n]
        merged: dict[Dot, _Version] = {}
        for node in self.nodes:
            for sibling in self.replicas[node].get(key, {}).values():
                _merge(merged, sibling)
            if node not in owners:
                self.replicas[node].pop(key, None)
        for node in owners:
            self.replicas[node][key] = dict(merged)

    # -- clients -----------------------------------------------------------------------------------
    def invoke(self, process: int) -> None:
        if self.budget <= 0:
            return
        self.budget -= 1
        while self.faults and self.budget <= self.faults[0][0]:
            self.partition(self.faults.pop(0)[1])
        key, node = self.rng.choice(self.active), self.rng.choice(self.nodes)
        common = {"process": process, "key": key, "node": node}
        if self.rng.random() < self.add_ratio:
            item, self.item = self.item, self.item + 1
            self.writes[key] = self.writes.get(key, 0) + 1
            if self.key_limit and self.writes[key] >= self.key_limit:
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
            past = _join(past, sibling.clock)
        elements = frozenset().union(*(v.elements for v in read)) | {item}
        new = _Version(dot, _join(past, clock_of([dot])), elements)
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
                      supersedes=[list(v.dot) for v in read])

    # -- nemesis and the end of the test -----------------------------------------------------------
    def partition(self, start: bool) -> None:
        f = "start-partition" if start else "stop-partition"
        minority = self.rng.sample(self.nodes, (len(self.nodes) - 1) // 2) if start else []
        self.emit(self.now, process=NEMESIS, type=INVOKE, f=f, value={"isolated": minority})
        self.side = {node: int(node in minority) for node in self.nodes}
        self.emit(self.now + MS, process=NEMESIS, type=OK, f=f, value={"isolated": minority})
        if not start:
            for key in self.keys:
                self.at(self.now + self.rng.randint(10, 600) * MS, self.handoff, key)

    def poll_round(self, round_: int, time: int) -> list[Op]:
        ops = []
        for key in self.keys:
            for node in self.nodes:
                common = {"process": CONVERGENCE, "f": "replica", "round": round_, "key": key, "node": node}
                value = [{**v.wire, "deleted": False} for v in self.replicas[node].get(key, {}).values()]
                ops += [{"time": time, "type": INVOKE, "value": None, **common},
                        {"time": time + MS // 10, "type": OK, "value": value, **common}]
                time += MS // 5
        for op in ops:
            self.emit(op["time"], **{k: v for k, v in op.items() if k != "time"})
        return ops


def generate(ops: int = 2_000, *, seed: int = 0, workload: str = "cart", concurrency: int = 10,
             nodes: int = 5, n: int = 3, r: int = 2, w: int = 2, add_ratio: float = 0.7,
             info_ratio: float = 0.01, fail_ratio: float = 0.005, active_keys: int = 8,
             key_limit: int | None = 250, partitions: int = 3, latency_ms: float = 1.5
             ) -> tuple[dict[str, Any], list[Op]]:
    """Simulate a test of ``ops`` client operations against a correct store; returns ``(test, history)``.

    Keys rotate like Jepsen's independent keys: after ``key_limit`` writes a key is retired and a fresh
    one joins the ``active_keys`` in use (register keys keep every blind write as a sibling, and the
    simulation slows quadratically with siblings: keep their ``key_limit`` small). ``partitions`` faults
    are spread over the run; the last one is still in place when the clients stop, so the heal,
    convergence polls and final reads follow.
    """
    from dynacheck.checkers.convergence import round_verdict  # the runner's own stopping rule

    rng = random.Random(seed)
    ids = [f"n{i}" for i in range(1, nodes + 1)]
    sim = _Simulation(rng, workload=workload, ops=ops, concurrency=concurrency, nodes=ids, n=n, r=r, w=w,
                      add_ratio=add_ratio, info_ratio=info_ratio, fail_ratio=fail_ratio,
                      active_keys=active_keys, key_limit=key_limit, latency_ms=latency_ms)
    # Faults start and stop when given shares of the operations have been issued, whatever the timing.
    length = 1 / (3 * (2 * partitions + 1)) if partitions else 0
    for i in range(partitions):
        start = (2 * i + 1) / (2 * partitions + 1) if i < partitions - 1 else 1 - length
        sim.faults += [(int(ops * (1 - start)), True)] + [(int(ops * (1 - start - length)), False)] * (
            i < partitions - 1)
    for process in range(concurrency):
        sim.at(process * MS // 10, sim.invoke, process)
    sim.run()
    processes = sorted({op["process"] for _, _, op in sim.ops if isinstance(op["process"], int)}
                       - {op["process"] for _, _, op in sim.ops if op["type"] == INFO}) or list(range(concurrency))
    sim.now += 100 * MS
    if partitions:
        sim.partition(False)
    replicas_needed = min(n, nodes)
    for round_ in range(1, 50):
        sim.run(until=sim.now + 150 * MS)
        sim.now += 150 * MS
        polled = sim.poll_round(round_, sim.now)
        sim.now = polled[-1]["time"] + MS if polled else sim.now
        if all(round_verdict(polled, replicas_needed).values()):
            break
    sim.run()
    time = sim.now + 10 * MS
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
            "time_limit": round(history[-1]["time"] / 1e9, 3) if history else 0,
            "synthetic": {"ops": ops, "seed": seed}}
    return test, history
