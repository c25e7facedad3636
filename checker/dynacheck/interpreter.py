"""The interpreter: the one place with threads (Jepsen's interpreter).

``run`` asks the generator for ops, hands each to its thread at the op's time, and collects the
completions. Each client thread runs as a *process*; when an op ends ``info`` (outcome unknown)
the thread continues as a new process (``p + concurrency``) so no process ever has two ops open.
The loop is written against a ``Runtime``: ``ThreadRuntime`` runs ops for real, ``SimRuntime``
runs them in simulated time (tests of generators and of the loop itself, no threads, no sleeps).
"""

from __future__ import annotations

import heapq
import queue
import random
import threading
import time
from collections.abc import Callable
from typing import Any

from dynacheck.generator import NEMESIS_THREAD, Context, Generator, Op
from dynacheck.history import INFO, INVOKE, NEMESIS

#: What runs an op: given the invoke op, returns its completion fields (``type`` and more).
Executor = Callable[[Op], Op]


class Runtime:
    """Time, dispatch and completions for the interpreter loop."""

    def now(self) -> int:
        raise NotImplementedError

    def dispatch(self, op: Op) -> None:
        """Invoke ``op`` on its thread at ``op["time"]`` (it is already recorded as committed)."""
        raise NotImplementedError

    def wait(self, until: int | None) -> list[tuple[Any, Op]]:
        """Block until a completion arrives or ``until`` (ns) passes; returns ``(thread, completion)``s."""
        raise NotImplementedError


def run(generator: Generator, runtime: Runtime, concurrency: int, nemesis: bool = True,
        on_completion: Callable[[Op], None] = lambda op: None, should_stop: Callable[[], bool] = lambda: False,
        first_process: int = 0) -> int:
    """Drive ``generator`` to its end and wait for every op in flight. Client processes start at
    ``first_process`` (a later phase continues above the processes an earlier one retired);
    returns the next unused process number."""
    threads: list[Any] = list(range(concurrency)) + ([NEMESIS_THREAD] if nemesis else [])
    process_of: dict[Any, Any] = {t: (NEMESIS if t == NEMESIS_THREAD else first_process + t) for t in threads}
    busy: set[Any] = set()
    exhausted = False
    while not (exhausted and not busy):
        if should_stop():
            exhausted = True
        wake: int | None = None
        if not exhausted:
            context = Context(time=runtime.now(), free=tuple(t for t in threads if t not in busy), busy=len(busy))
            answer = generator.op(context)
            if answer is None:
                exhausted = True
                continue
            if isinstance(answer, dict):
                thread = answer["thread"]
                if thread in busy or thread not in process_of:
                    raise RuntimeError(f"generator gave an op to thread {thread!r}, which is not free")
                busy.add(thread)
                runtime.dispatch({**answer, "process": process_of[thread]})
                continue
            wake = answer.wake
        if not busy and wake is None and not exhausted:
            raise RuntimeError("generator is pending with nothing in flight and no wake time")
        for thread, completion in runtime.wait(wake):
            busy.discard(thread)
            if completion["type"] == INFO and isinstance(thread, int):
                process_of[thread] += concurrency
            on_completion(completion)
    clients = [process for thread, process in process_of.items() if isinstance(thread, int)]
    return max(clients, default=first_process - 1) + 1


def complete(op: Op, fields: Op) -> Op:
    """The completion op of invoke ``op`` (same process, f, key, node) with ``fields`` over it."""
    base = {k: op[k] for k in ("process", "f", "key", "value", "node", "final") if k in op}
    return {**base, **fields}


def invocation(op: Op) -> Op:
    """The history entry of an invoke: the op without the scheduling fields."""
    return {**{k: v for k, v in op.items() if k not in ("thread", "time")}, "type": INVOKE}


class ThreadRuntime(Runtime):
    """Real threads: one per client thread and one for the nemesis. ``record`` appends an op to
    the history, stamping its ``time`` (under the history's lock, so times follow indexes), and
    returns the numbered op."""

    def __init__(self, execute: Callable[[Any], Executor], record: Callable[[Op], Op],
                 clock: Callable[[], int] = time.monotonic_ns):
        self.execute_for, self.record, self.clock = execute, record, clock
        self.start = clock()
        self.completions: queue.Queue[tuple[Any, Op]] = queue.Queue()
        self.inboxes: dict[Any, queue.Queue[Op | None]] = {}
        self.workers: list[threading.Thread] = []
        self.stopping = threading.Event()

    def now(self) -> int:
        return self.clock() - self.start

    def _inbox(self, thread: Any) -> queue.Queue[Op | None]:
        if thread not in self.inboxes:
            inbox: queue.Queue[Op | None] = queue.Queue()
            self.inboxes[thread] = inbox
            worker = threading.Thread(target=self._work, args=(thread, inbox), name=f"dynacheck-{thread}",
                                      daemon=True)
            self.workers.append(worker)
            worker.start()
        return self.inboxes[thread]

    def dispatch(self, op: Op) -> None:
        self._inbox(op["thread"]).put(op)

    def _work(self, thread: Any, inbox: queue.Queue[Op | None]) -> None:
        execute = self.execute_for(thread)
        while (op := inbox.get()) is not None:
            delay = op["time"] - self.now()
            if (delay > 0 and self.stopping.wait(delay / 1e9)) or self.stopping.is_set():
                continue  # interrupted: ops not yet invoked never happen
            completion = invoke = invocation(op)
            try:
                invoke = self.record(invoke)
                fields = execute(invoke)
            except Exception as exc:  # noqa: BLE001 - an executor or store failure must not kill the run
                fields = {"type": INFO, "error": f"{type(exc).__name__}: {exc}"}
            try:
                completion = self.record(complete(invoke, fields))
            except Exception:  # noqa: BLE001 - the loop must still hear that the thread is free
                completion = complete(invoke, fields)
            self.completions.put((thread, completion))

    def wait(self, until: int | None) -> list[tuple[Any, Op]]:
        timeout = None if until is None else max(0.0, (until - self.now()) / 1e9)
        try:
            first = self.completions.get(timeout=timeout)
        except queue.Empty:
            return []
        done = [first]
        while True:
            try:
                done.append(self.completions.get_nowait())
            except queue.Empty:
                return done

    def close(self, join_seconds: float = 150.0) -> None:
        """Stop: ops not yet invoked are dropped, ops in flight (a nemesis op too) finish; waits
        up to ``join_seconds`` for the workers, so nothing acts on the nodes after it returns."""
        self.stopping.set()
        for inbox in self.inboxes.values():
            inbox.put(None)
        deadline = time.monotonic() + join_seconds
        for worker in self.workers:
            worker.join(max(0.0, deadline - time.monotonic()))


class SimRuntime(Runtime):
    """Simulated time: ``latency(op, rng)`` ns and ``outcome(op, rng)`` completion fields decide
    each op; the history is kept in ``history``."""

    def __init__(self, latency: Callable[[Op, random.Random], int],
                 outcome: Callable[[Op, random.Random], Op] = lambda op, rng: {"type": "ok"}, seed: int = 0):
        self.latency, self.outcome = latency, outcome
        self.rng = random.Random(seed)
        self.time = 0
        self.history: list[Op] = []
        self.events: list[tuple[int, int, str, Any, Op]] = []
        self.sequence = 0

    def now(self) -> int:
        return self.time

    def _push(self, at: int, kind: str, thread: Any, op: Op) -> None:
        self.sequence += 1
        heapq.heappush(self.events, (at, self.sequence, kind, thread, op))

    def dispatch(self, op: Op) -> None:
        self._push(max(op["time"], self.time), "invoke", op["thread"], op)

    def wait(self, until: int | None) -> list[tuple[Any, Op]]:
        while self.events:
            at, _, kind, thread, op = self.events[0]
            if until is not None and at > until:
                break
            heapq.heappop(self.events)
            self.time = max(self.time, at)
            if kind == "invoke":
                invoke = {**invocation(op), "time": self.time, "index": len(self.history)}
                self.history.append(invoke)
                self._push(self.time + self.latency(invoke, self.rng), "complete", thread, invoke)
            else:
                completion = {**complete(op, self.outcome(op, self.rng)), "time": self.time,
                              "index": len(self.history)}
                self.history.append(completion)
                return [(thread, completion)]
        if until is not None:
            self.time = max(self.time, until)
        elif not self.events:
            raise RuntimeError("simulation waits forever: nothing in flight")
        return []


def simulate(generator: Generator, concurrency: int, latency: Callable[[Op, random.Random], int],
             outcome: Callable[[Op, random.Random], Op] = lambda op, rng: {"type": "ok"},
             seed: int = 0, nemesis: bool = True) -> list[Op]:
    """Run ``generator`` in simulated time; returns the history it would produce."""
    runtime = SimRuntime(latency, outcome, seed)
    run(generator, runtime, concurrency, nemesis)
    return runtime.history

