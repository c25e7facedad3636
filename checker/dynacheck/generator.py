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


class FaultCycle(Generator):
    """The nemesis schedule: wait ``interval``, start a fault (the next from ``plan``), keep it for
    ``duration``, stop it, and again. ``plan(rng)`` returns ``(fault, start_value)``."""

    def __init__(self, plan: Callable[[random.Random], tuple[str, Any]], rng: random.Random,
                 interval_ns: int, duration_ns: int):
        self.plan, self.rng = plan, rng
        self.interval, self.duration = interval_ns, duration_ns
        self.active: tuple[str, Any] | None = None
        self.due: int | None = None

    def op(self, context: Context) -> Answer:
        if NEMESIS_THREAD not in context.free:
            return Pending()
        if self.due is None:
            self.due = context.time + (self.duration if self.active else self.interval)
        if self.active is None:
            fault, value = self.plan(self.rng)
            op = {"f": f"start-{fault}", "value": value}
            self.active = (fault, value)
        else:
            op = {"f": f"stop-{self.active[0]}", "value": self.active[1]}
            self.active = None
        op.update(thread=NEMESIS_THREAD, time=max(self.due, context.time))
        self.due = None
        return op
