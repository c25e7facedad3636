"""The history: every operation of a test as ``invoke`` then ``ok``, ``fail`` or ``info`` (Jepsen's model).

One op per JSON line in ``history.jsonl`` (CONTRACT): ``index``, ``time`` (ns since the test
started), ``process``, ``type``, ``f``, ``key``, ``value``, ``node``, plus fields some ops carry:

* client processes are ints. A process whose op ended ``info`` never runs again (its outcome is
  unknown, so a later op of it could overlap); its thread continues as process ``p + concurrency``.
* ``f`` for clients: ``add`` (cart: value = the unique item added by read-modify-write), ``write``
  (register: a blind write of a unique value), ``read`` (value on completion = sorted list of the
  elements present: the union of the items of every live sibling), ``remove`` (cart: invoke value
  null and ``pick``, which of the read's items goes; the completion's ``value`` is the item removed
  by read-modify-write, and its ``f`` is ``delete`` when the item was the last and the key was
  deleted with the context; a read that found nothing completes ``fail`` with ``empty``). Reads done
  after the final heal carry ``"final": true``; ``ok`` reads also carry ``context_clock`` (the
  clock of the context they returned, tombstones included).
* ``ok`` writes carry ``version``: ``{"dot": [actor, counter], "clock": CLOCK}`` of the version they
  created, ``supersedes`` (the dots their read returned) and ``read_clock`` (the union of the clocks
  their read returned: what the write may claim to have seen); ``ok`` reads carry ``versions``: one
  ``{"dot", "clock", "elements"}`` per live sibling. A completion's ``node`` is the node that served
  the op (a client fails over to the next node when one refuses the connection).
  ``CLOCK`` is ``{"vector": {actor: n}, "cloud": [[actor, n], ...]}``: every dot the version has
  seen, its own included (``/admin/replica``'s shape).
* ``fail`` means the op certainly did not happen; ``info`` means it may or may not have (timeout,
  connection lost, 503 on a write) and is never counted as a failure. ``error`` says why.
* process ``"nemesis"``: ``f`` is ``start-<fault>`` or ``stop-<fault>`` (fault: partition, clock,
  kill, pause, netem, disk, power, corrupt, membership); ``value`` on invoke is the plan (with the planned
  fault's ``id`` from ``test.json``'s ``fault_schedule``), on completion what was done per node; a
  start the nemesis decided not to do completes ``info`` with ``skipped`` (the reason).
* process ``"convergence"``: ``f`` ``replica``, one poll of ``/admin/replica/{key}`` on ``node`` in
  poll ``round``; the ``ok`` value is that node's sibling list (``[]`` when it holds none), each
  ``{"dot", "clock", "deleted", "elements"}``; ``f`` ``status``, with ``phase`` ``before`` (right
  after the final heal) or ``after`` (once the polls ended): the node's repair counters
  (``anti_entropy``, ``hinted_keys``, ``handoffs``).
* process ``"monitor"``: ``f`` ``replica``, polls of ``/admin/replica/{key}`` on ``node`` for the hot
  keys while the workload runs (same value as a convergence poll): what each replica held, in time.
"""

from __future__ import annotations

import contextlib
import gc
import json
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TextIO

Op = dict[str, Any]

INVOKE, OK, FAIL, INFO = "invoke", "ok", "fail", "info"
NEMESIS = "nemesis"
CONVERGENCE = "convergence"
MONITOR = "monitor"
COMPLETIONS = (OK, FAIL, INFO)


def is_client(op: Op) -> bool:
    """True for ops of workload processes (ints), not the nemesis or the convergence poller."""
    return isinstance(op.get("process"), int)


def pairs(history: Iterable[Op]) -> Iterator[tuple[Op, Op | None]]:
    """Each invoke with its completion (None when the history ends first), in invocation order."""
    open_ops: dict[Any, Op] = {}
    ordered: list[list[Op | None]] = []
    slot_of: dict[Any, list[Op | None]] = {}
    for op in history:
        process = op.get("process")
        if op["type"] == INVOKE:
            slot: list[Op | None] = [op, None]
            ordered.append(slot)
            slot_of[process] = slot
            open_ops[process] = op
        elif process in open_ops:
            slot_of[process][1] = op
            del open_ops[process]
    yield from ((invoke, completion) for invoke, completion in ordered)  # type: ignore[misc]


class HistoryWriter:
    """Appends ops to ``history.jsonl`` as they happen (thread-safe), numbering them."""

    def __init__(self, path: Path, clock: Callable[[], int] | None = None):
        self.path = path
        self.clock = clock
        self._file: TextIO = path.open("a", encoding="utf-8")
        self._lock = threading.Lock()
        self._index = 0
        self.ops: list[Op] = []

    def append(self, op: Op) -> Op:
        """Number ``op``, stamp its ``time`` (when it has none and the writer has a clock), write
        it out and keep it in memory; returns it. Stamping under the lock keeps times in index order."""
        with self._lock:
            if self._file.closed:  # a straggler after an interrupt: the stored history has ended
                return op
            op = {"index": self._index, **op}
            if self.clock is not None and "time" not in op:
                op["time"] = self.clock()
            self._index += 1
            self.ops.append(op)
            self._file.write(json.dumps(op, separators=(",", ":")) + "\n")
            self._file.flush()
        return op

    def close(self) -> None:
        with self._lock:
            self._file.close()


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Suspend the cyclic garbage collector: a loaded history is millions of objects that every full
    collection would rescan while it is loaded or indexed (it halves loading and checking times)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def read_history(path: Path) -> list[Op]:
    """Load a ``history.jsonl``; a torn last line (a crash mid-write) is ignored, any other
    undecodable line is an error naming its line number."""
    ops: list[Op] = []
    with gc_paused():
        lines = path.read_text(encoding="utf-8").splitlines()
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                ops.append(json.loads(line))
            except ValueError as exc:
                if number == len(lines):
                    break
                raise ValueError(f"{path}:{number}: not a JSON op ({exc})") from exc
    gc.freeze()  # the history lives as long as the process: later collections skip it
    return ops


def write_history(path: Path, ops: Iterable[Op]) -> None:
    """Write a whole history at once (tests, benchmarks)."""
    with path.open("w", encoding="utf-8") as out:
        for op in ops:
            out.write(json.dumps(op, separators=(",", ":")) + "\n")


def nemesis_intervals(history: Iterable[Op], end_time: int | None = None) -> list[tuple[str, int, int]]:
    """``(fault, start_ns, end_ns)`` for every fault: from the completion of its ``start-<fault>``
    to the completion of the matching ``stop-<fault>`` (or ``end_time``/the last op when never stopped)."""
    intervals: list[tuple[str, int, int]] = []
    started: dict[str, int] = {}
    last = 0
    for op in history:
        last = max(last, op.get("time", 0))
        if op.get("process") != NEMESIS or op["type"] == INVOKE:
            continue
        action, _, fault = str(op.get("f", "")).partition("-")
        if action == "start" and fault not in started:
            started[fault] = op["time"]
        elif action == "stop" and fault in started:
            intervals.append((fault, started.pop(fault), op["time"]))
    finish = last if end_time is None else end_time
    intervals += [(fault, start, finish) for fault, start in started.items()]
    return sorted(intervals, key=lambda interval: interval[1])
