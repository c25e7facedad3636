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
from functools import cached_property
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
    ordered: list[list[Op | None]] = []
    # Per process, the slot of its invoke still waiting for a completion.
    open_slots: dict[Any, list[Op | None]] = {}
    for op in history:
        if op["type"] == INVOKE:
            slot: list[Op | None] = [op, None]
            ordered.append(slot)
            open_slots[op.get("process")] = slot
        else:
            slot = open_slots.pop(op.get("process"), None)  # type: ignore[assignment]
            if slot is not None:
                slot[1] = op
    yield from ((invoke, completion) for invoke, completion in ordered)  # type: ignore[misc]


class HistoryIndex:
    """What several checkers derive from one history, each computed once, on first use: the pairs,
    the client pairs, the ops of the nemesis, convergence and monitor processes, the last time, and
    whatever a checker ``memo``-izes (the causality analysis, which graphs draws from too).

    ``check_all`` hands one index to every checker; a checker called on its own makes its own. The
    history must not change while an index of it is in use."""

    def __init__(self, history: list[Op]):
        self.history = history
        self._memo: dict[Any, Any] = {}
        self._end: int | None = None
        self._by_process: dict[str, list[Op]] | None = None

    @cached_property
    def pairs(self) -> list[tuple[Op, Op | None]]:
        """``pairs(history)`` as a list."""
        return list(pairs(self.history))

    @cached_property
    def client_pairs(self) -> list[tuple[Op, Op | None]]:
        """The pairs of client (workload) processes: the same as pairing only the client ops."""
        return [pair for pair in self.pairs if is_client(pair[0])]

    @property
    def end(self) -> int:
        """The largest ``time`` of any op (0 for none)."""
        self._scan()
        return self._end  # type: ignore[return-value]

    def ops_of(self, process: str) -> list[Op]:
        """Every op of ``process`` (``NEMESIS``, ``CONVERGENCE`` or ``MONITOR``), in history order."""
        self._scan()
        return self._by_process[process]  # type: ignore[index]

    def memo(self, name: Any, compute: Callable[[], Any]) -> Any:
        """``compute()``'s value, computed the first time ``name`` is asked for."""
        if name not in self._memo:
            self._memo[name] = compute()
        return self._memo[name]

    def release(self) -> None:
        """Drop everything computed (the history stays): it is freed at once, even while a frame that
        used the index lingers in a garbage cycle until the next collection (saving a PNG leaves one)."""
        for name in ("pairs", "client_pairs"):
            self.__dict__.pop(name, None)
        self._memo.clear()
        self._end = self._by_process = None

    def _scan(self) -> None:
        # One pass for the last time and the ops of the non-client processes.
        if self._by_process is not None:
            return
        end = None
        grouped: dict[str, list[Op]] = {NEMESIS: [], CONVERGENCE: [], MONITOR: []}
        for op in self.history:
            time = op.get("time", 0)
            if end is None or time > end:
                end = time
            process = op.get("process")
            if isinstance(process, str) and process in grouped:
                grouped[process].append(op)
        self._end, self._by_process = (0 if end is None else end), grouped


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
    undecodable line is an error naming its line number.

    msgspec decodes each line (about twice as fast as the json module, and most of loading was
    decoding); a line it refuses goes to ``json.loads``, which reads what ``json.dumps`` may write
    beyond strict JSON (``NaN``, ``Infinity``, lone surrogates), so every history reads as it did.
    (orjson would be as fast, but turns integers beyond 64 bits into floats without a word.)"""
    import msgspec  # here, not at the top: it comes with the checker extra, and nodes import dynacheck for lazyfs

    decode = msgspec.json.Decoder().decode
    ops: list[Op] = []
    # (line number, error) of a line that did not decode: an error once another line follows.
    undecodable: tuple[int, ValueError] | None = None
    # Line by line from the file (not the whole text split at once): a line's bytes are freed once
    # decoded, which saves the history's size in memory and a fifth of the page faults.
    with gc_paused(), path.open("rb") as lines:
        for number, line in enumerate(lines, start=1):
            if undecodable is not None:
                raise ValueError(f"{path}:{undecodable[0]}: not a JSON op ({undecodable[1]})") from undecodable[1]
            try:
                ops.append(decode(line))
            except msgspec.DecodeError:
                if not line.strip():  # a blank line (tested only here: stripping every line cost a copy each)
                    continue
                try:
                    ops.append(json.loads(line.decode("utf-8")))
                except ValueError as exc:
                    undecodable = (number, exc)
        # The history lives as long as the process: later collections skip it. Frozen before the
        # collector is back on, or its first (young) collection would scan the whole history.
        gc.freeze()
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
