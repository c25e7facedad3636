"""Generators: what to do when (Jepsen's generator model, made small and explicit).

A generator is asked ``op(context)`` whenever a thread may be free; it answers an op (a dict with
``f``, ``key``, ``value``, the ``thread`` that runs it and the ``time`` in ns at which to invoke it),
``Pending(wake)`` (nothing now: ask again after a completion or at ``wake``) or ``None`` (done).
Once an op is returned it is committed: the interpreter reserves its thread and invokes it at its
time. Generators are deterministic: all randomness comes from a ``random.Random`` seeded by the
test, and all time from the context, so a seed replays the same schedule and tests can simulate a
whole run without threads or sleeps (``dynacheck.interpreter.simulate``).

Threads are ``0..concurrency-1`` for clients and ``"nemesis"`` for the fault injector.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import attrs

NEMESIS_THREAD = "nemesis"
SECOND = 1_000_000_000

Op = dict[str, Any]


@attrs.frozen
class Context:
    """What a generator may look at: the time (ns since the test started) and the free threads."""

    time: int
    free: tuple[Any, ...]
    busy: int = 0  # threads with an op in flight or committed

    def free_clients(self) -> list[int]:
        return [thread for thread in self.free if isinstance(thread, int)]


@attrs.frozen
class Pending:
    """Nothing to do now: ask again after the next completion, or at ``wake`` (ns) if given."""

    wake: int | None = None


Answer = Op | Pending | None


class Generator:
    """The protocol: ``op`` must not block, sleep, read a clock or touch the network."""

    def op(self, context: Context) -> Answer:
        raise NotImplementedError


class ClientOps(Generator):
    """An endless stream of client ops from ``make(rng, n)`` (n counts the ops made), each on the
    lowest free client thread."""

    def __init__(self, make: Callable[[random.Random, int], Op], rng: random.Random):
        self.make, self.rng, self.count = make, rng, 0

    def op(self, context: Context) -> Answer:
        free = context.free_clients()
        if not free:
            return Pending()
        op = {**self.make(self.rng, self.count), "thread": free[0], "time": context.time}
        self.count += 1
        return op


def mix(choices: Sequence[tuple[float, Callable[[random.Random, int], Op]]]) -> Callable[[random.Random, int], Op]:
    """An op maker that picks one of ``choices`` (weight, maker) at random for each op."""
    weights = [weight for weight, _ in choices]
    makers = [maker for _, maker in choices]

    def make(rng: random.Random, n: int) -> Op:
        return rng.choices(makers, weights)[0](rng, n)
    return make


class Stagger(Generator):
    """Rate limiting: successive ops are spaced by a uniform random gap in [0, 2*interval], so the
    mean rate is 1/interval across all threads (Jepsen's ``stagger``)."""

    def __init__(self, interval_ns: int, inner: Generator, rng: random.Random):
        self.interval, self.inner, self.rng = interval_ns, inner, rng
        self.next_time: int | None = None

    def op(self, context: Context) -> Answer:
        answer = self.inner.op(context)
        if not isinstance(answer, dict):
            return answer
        if self.next_time is None:
            self.next_time = context.time
        answer = {**answer, "time": max(answer["time"], self.next_time)}
        self.next_time = answer["time"] + int(self.rng.uniform(0, 2 * self.interval))
        return answer


class TimeLimit(Generator):
    """Passes ``inner``'s ops until ``limit_ns`` after it was first asked; then it is done."""

    def __init__(self, limit_ns: int, inner: Generator):
        self.limit, self.inner = limit_ns, inner
        self.deadline: int | None = None

    def op(self, context: Context) -> Answer:
        if self.deadline is None:
            self.deadline = context.time + self.limit
        if context.time >= self.deadline:
            return None
        answer = self.inner.op(context)
        if isinstance(answer, dict) and answer["time"] >= self.deadline:
            return None
        if isinstance(answer, Pending):
            wake = self.deadline if answer.wake is None else min(answer.wake, self.deadline)
            return Pending(wake)
        return answer


class Concurrently(Generator):
    """Several generators at once (clients and the nemesis): the first op any of them has now."""

    def __init__(self, *inners: Generator):
        self.inners = list(inners)

    def op(self, context: Context) -> Answer:
        wakes: list[int] = []
        for inner in list(self.inners):
            answer = inner.op(context)
            if answer is None:
                self.inners.remove(inner)
            elif isinstance(answer, Pending):
                if answer.wake is not None:
                    wakes.append(answer.wake)
            else:
                return answer
        if not self.inners:
            return None
        return Pending(min(wakes) if wakes else None)


class Phases(Generator):
    """Run generators one after another; the next starts once the previous is done and every
    thread is idle (a barrier: the final reads never overlap the main phase)."""

    def __init__(self, *phases: Generator):
        self.phases = list(phases)

    def op(self, context: Context) -> Answer:
        while self.phases:
            answer = self.phases[0].op(context)
            if answer is not None:
                return answer
            if context.busy:
                return Pending()
            self.phases.pop(0)
        return None


class Once(Generator):
    """Each of the given ops once, in order, on free client threads (e.g. the final reads)."""

    def __init__(self, ops: Iterable[Op]):
        self.ops = list(ops)

    def op(self, context: Context) -> Answer:
        if not self.ops:
            return None
        free = context.free_clients()
        if not free:
            return Pending()
        return {**self.ops.pop(0), "thread": free[0], "time": context.time}


class Sleep(Generator):
    """Nothing for ``duration_ns`` after it is first asked (a quiet phase)."""

    def __init__(self, duration_ns: int):
        self.duration = duration_ns
        self.until: int | None = None

    def op(self, context: Context) -> Answer:
        if self.until is None:
            self.until = context.time + self.duration
        return None if context.time >= self.until else Pending(self.until)


@attrs.frozen
class PlannedFault:
    """One fault of a test's schedule: its kind, when it starts and stops (ns since the workload
    started) and what exactly it breaks (the ``plan`` its ``Fault`` chose)."""

    id: int
    fault: str
    start: int
    stop: int
    plan: Any

    def document(self) -> dict[str, Any]:
        """How the schedule is saved in ``test.json``."""
        return {"id": self.id, "fault": self.fault, "start": self.start, "stop": self.stop, "plan": self.plan}


#: How a fault relates to the one before it: at its own time, inside it (overlapping), or just after
#: it healed (while hinted handoff and repair are busy with what it left), or repeated quickly (flapping).
RELATIONS = ("independent", "during", "after", "flap")


def plan_schedule(kinds: Sequence[str], plan: Callable[[str, random.Random, frozenset[str]], tuple[Any, set[str]]],
                  rng: random.Random, time_limit_ns: int, interval_ns: int, duration_ns: int,
                  held_limit: int, placed: Callable[[PlannedFault], None] | None = None) -> list[PlannedFault]:
    """The whole fault schedule of a test, from the seed alone (pure).

    Kinds are taken in shuffled rounds, so a short run still meets each. Gaps and durations vary
    around ``interval_ns`` and ``duration_ns`` (a third to twice as long), and each fault relates to
    the one before it in one of ``RELATIONS``: faults of different kinds overlap (a kill during a
    partition, a kill just as a healed partition's hints are delivered), and a fault may flap.
    ``plan(kind, rng, held)`` returns the fault's plan and the nodes it takes down (``held`` are the
    nodes taken by faults active at that time: they are avoided). At most one fault of a kind is
    active at once, and faults that take nodes down never hold more than ``held_limit`` nodes
    together, except a fault that takes every node (a whole-cluster outage), which only ever runs
    while no other fault holds a node.

    ``placed`` hears of every fault kept, in placement order, which is start order (a fault never
    starts before the one placed before it), so a plan that depends on the plans before it (the
    membership reached so far) can follow.
    """
    if not kinds:
        return []
    faults: list[PlannedFault] = []
    order: list[str] = []
    time = interval_ns
    previous: PlannedFault | None = None
    held_by: dict[int, set[str]] = {}
    while time < time_limit_ns:
        if not order:
            order = list(kinds)
            rng.shuffle(order)
        kind = order.pop(0)
        relation = rng.choice(RELATIONS) if previous is not None else "independent"
        length = int(duration_ns * rng.uniform(1 / 3, 2))
        if relation == "during" and previous is not None:
            start = previous.start + int((previous.stop - previous.start) * rng.uniform(0.1, 0.7))
        elif relation == "after" and previous is not None:
            start = previous.stop + int(rng.uniform(0.05, 1.0) * SECOND)
        elif relation == "flap":
            if previous is not None and previous.fault != kind:
                order.insert(0, kind)  # the round still owes this kind: a flap repeats, it does not replace
                kind = previous.fault
            start = (previous.stop if previous is not None else time) + int(rng.uniform(0.1, 0.5) * SECOND)
            length = max(SECOND // 10, length // 4)
        else:
            start = time
        start, value, takes = _place(kind, start, length, faults, held_by, plan, rng, held_limit)
        if start >= time_limit_ns:
            break
        planned = PlannedFault(id=len(faults), fault=kind, start=start, stop=min(start + length, time_limit_ns),
                               plan=value)
        faults.append(planned)
        held_by[planned.id] = set(takes)
        if placed is not None:
            placed(planned)
        previous = planned
        time = max(time, start) + int(interval_ns * rng.uniform(1 / 3, 2))
    return sorted(faults, key=lambda fault: (fault.start, fault.id))


def _place(kind: str, start: int, length: int, faults: list[PlannedFault], held_by: dict[int, set[str]],
           plan: Callable[[str, random.Random, frozenset[str]], tuple[Any, set[str]]], rng: random.Random,
           held_limit: int) -> tuple[int, Any, set[str]]:
    """The earliest start from ``start`` at which a fault of ``kind`` lasting ``length`` overlaps no
    fault of its own kind and, with the faults it overlaps, takes at most ``held_limit`` nodes down;
    with its plan and the nodes it takes."""
    while True:
        overlapping = [fault for fault in faults if fault.start < start + length and start < fault.stop]
        same = [fault.stop for fault in overlapping if fault.fault == kind]
        if same:
            start = max(same) + SECOND // 10
            continue
        held = frozenset(node for fault in overlapping for node in held_by.get(fault.id, ()))
        value, takes = plan(kind, rng, held)
        takes = set(takes)
        alone = not held  # a fault beyond the limit (a whole-cluster outage) runs only alone
        if not takes or len(held | takes) <= held_limit or alone:
            return start, value, takes
        start = max(fault.stop for fault in overlapping if held_by.get(fault.id)) + SECOND // 10


class FaultSchedule(Generator):
    """Plays a planned schedule on the nemesis thread: each fault's start, then its stop. The
    thread runs one op at a time, so an op that takes long (a restart) delays the next: a start
    issued late keeps its planned duration, and a start whose kind, or one of whose nodes, is still
    held by a fault that started late waits for that fault's stop (so the plan's rules hold however
    the run's timing went). Every op carries the planned fault's ``id``."""

    def __init__(self, schedule: Sequence[PlannedFault]):
        # (due, order, action, fault): stops sort before starts due at the same time.
        self.events: list[tuple[int, int, str, PlannedFault]] = []
        for fault in schedule:
            self._push(fault.start, "start", fault)
        #: Faults started and not yet stopped, with the time their stop is due.
        self.open: dict[int, tuple[PlannedFault, int]] = {}

    def _push(self, due: int, action: str, fault: PlannedFault) -> None:
        self.events.append((due, 0 if action == "stop" else 1, action, fault))
        self.events.sort(key=lambda event: (event[0], event[1], event[3].id))

    def _blocked_until(self, fault: PlannedFault) -> int | None:
        """When the open faults that ``fault`` may not overlap are due to stop (None: none)."""
        nodes = set(_nodes_of(fault))
        stops = [due for other, due in self.open.values()
                 if other.fault == fault.fault or nodes & set(_nodes_of(other))]
        return max(stops) if stops else None

    def op(self, context: Context) -> Answer:
        if NEMESIS_THREAD not in context.free:
            return Pending() if self.events else None
        while self.events:
            due, _, action, fault = self.events[0]
            if due > context.time:
                return Pending(due)
            self.events.pop(0)
            if action == "start":
                blocked = self._blocked_until(fault)
                if blocked is not None:
                    self._push(blocked, "start", fault)  # after the blocking stop (stops sort first)
                    continue
                stop = max(fault.stop, context.time + fault.stop - fault.start)
                self.open[fault.id] = (fault, stop)
                self._push(stop, "stop", fault)
            else:
                self.open.pop(fault.id, None)
            value = fault.plan if not isinstance(fault.plan, dict) else {**fault.plan, "id": fault.id}
            return {"f": f"{action}-{fault.fault}", "value": value, "thread": NEMESIS_THREAD, "time": context.time}
        return None


def _nodes_of(fault: PlannedFault) -> list[str]:
    return list(fault.plan.get("nodes", ())) if isinstance(fault.plan, dict) else []
