"""Synthetic histories for the checkers' tests and benchmark: hand-written ones and simulated ones.

``HistoryBuilder`` writes small histories op by op (times in ms) so tests read like behaviour, in the
format of :mod:`dynacheck.history` with every field the runner produces (``read_clock``, status
snapshots, skipped faults, a completion's own ``node``). ``generate`` runs the seeded model of a
*correct* Dynamo store of :mod:`dynacheck.simulation` and returns its ``(test, history)``. The clocks
here are the history's: ``{"vector": {actor: n}, "cloud": [[actor, n], ...]}``, built from dots.

Pure: everything random comes from ``random.Random(seed)``; nothing touches the network or the clock.
"""

from __future__ import annotations

from collections.abc import Iterable
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


def join_clocks(a: Clock, b: Clock) -> Clock:
    """The least upper bound of two clocks (per-actor maximum, union of clouds), normalised."""
    vector = dict(a[0])
    for actor, n in b[0].items():
        if n > vector.get(actor, 0):
            vector[actor] = n
    return _normalise(vector, a[1] | b[1])


def clock_contains(clock: Clock, dot: Dot) -> bool:
    """True when ``clock`` has seen ``dot``."""
    return dot[1] <= clock[0].get(dot[0], 0) or dot in clock[1]


class HistoryBuilder:
    """Builds a history by hand: each call appends an invoke and its completion at the given times (ms)."""

    def __init__(self) -> None:
        self._ops: list[tuple[float, int, Op]] = []

    def _op(self, at_ms: float, **fields: Any) -> None:
        self._ops.append((at_ms, len(self._ops), {"time": int(at_ms * MS), **fields}))

    def add(self, process: int, key: str, element: int, invoke_ms: float, done_ms: float | None = None,
            outcome: str = OK, dot: Dot | None = None, seen: Iterable[Dot] = (),
            supersedes: Iterable[Dot] = (), f: str = "add", node: str = "n1", *,
            read_clock: Iterable[Dot] | None = None, clock: dict[str, Any] | None = None,
            legacy: bool = False, done_node: str | None = None) -> None:
        """An add (or ``f="write"``); when ``ok`` it created version ``dot`` whose clock is ``seen`` plus
        ``dot`` (or the history-shaped ``clock``), superseding ``supersedes``, after a read whose clocks
        held ``read_clock`` (default: ``seen``, what a correct store claims). ``legacy`` leaves out
        ``read_clock`` as older runners did; ``done_node`` is the node the client failed over to;
        ``done_ms=None`` leaves the add without a completion."""
        common = {"process": process, "f": f, "key": key, "value": element, "node": node}
        self._op(invoke_ms, type=INVOKE, **common)
        if done_ms is None:
            return
        extra: dict[str, Any] = {}
        if outcome == OK and dot is not None:
            extra["version"] = {"dot": list(dot), "clock": clock or clock_json(clock_of([*seen, dot]))}
            extra["supersedes"] = [list(d) for d in supersedes]
            if not legacy:
                extra["read_clock"] = clock_json(clock_of(seen if read_clock is None else read_clock))
        self._op(done_ms, type=outcome, **{**common, "node": done_node or node}, **extra)

    def remove(self, process: int, key: str, element: int | None, invoke_ms: float, done_ms: float | None = None,
               outcome: str = OK, dot: Dot | None = None, seen: Iterable[Dot] = (),
               supersedes: Iterable[Dot] = (), elements: Iterable[int] | None = None, delete: bool = False,
               node: str = "n1", *, read_clock: Iterable[Dot] | None = None, pick: int = 0) -> None:
        """A remove of ``element`` (the client's completion names it; ``None`` with ``fail``: the read
        found nothing); when ``ok`` it created version ``dot`` (clock ``seen`` plus ``dot``) holding
        ``elements``, a tombstone with ``delete`` (the completion's ``f`` is then ``delete``)."""
        common = {"process": process, "key": key, "node": node}
        self._op(invoke_ms, type=INVOKE, f="remove", value=None, pick=pick, **common)
        if done_ms is None:
            return
        extra: dict[str, Any] = {}
        if element is None:
            extra = {"error": "nothing to remove: the read found an empty cart", "empty": True}
        if outcome == OK and dot is not None:
            extra["version"] = {"dot": list(dot), "clock": clock_json(clock_of([*seen, dot])),
                                "elements": sorted(elements or ())}
            if delete:
                extra["version"]["deleted"] = True
            extra["supersedes"] = [list(d) for d in supersedes]
            extra["read_clock"] = clock_json(clock_of(seen if read_clock is None else read_clock))
        elif outcome == INFO and delete:  # what the tombstone it may have written has seen (the client's)
            extra["read_clock"] = clock_json(clock_of(seen if read_clock is None else read_clock))
        self._op(done_ms, type=outcome, f="delete" if delete else "remove", value=element, **common, **extra)

    def read(self, process: int, key: str, elements: Iterable[int], invoke_ms: float, done_ms: float,
             versions: list[dict[str, Any]] | None = None, final: bool = False, node: str = "n1",
             outcome: str = OK, done_node: str | None = None, context: Iterable[Dot] | None = None) -> None:
        """A read that returned ``elements`` (and ``versions``, see :func:`version`) when ``ok``;
        ``done_node`` is the node the client failed over to; ``context`` the dots its context
        held (tombstones included: its ``context_clock``)."""
        common: dict[str, Any] = {"process": process, "f": "read", "key": key, "node": node}
        if final:
            common["final"] = True
        self._op(invoke_ms, type=INVOKE, value=None, **common)
        extra: dict[str, Any] = {}
        if outcome == OK:
            extra = {"value": sorted(elements), "versions": versions or []}
            if context is not None:
                extra["context_clock"] = clock_json(clock_of(context))
        self._op(done_ms, type=outcome, **{**common, "node": done_node or node}, **extra)

    def nemesis(self, f: str, invoke_ms: float, done_ms: float | None, outcome: str = OK, value: Any = None,
                **completion: Any) -> None:
        """A nemesis op such as ``start-partition`` with plan ``value`` (``done_ms=None``: it never
        completed); ``completion`` adds fields such as ``error`` or ``skipped``."""
        self._op(invoke_ms, process=NEMESIS, type=INVOKE, f=f, value=value)
        if done_ms is not None:
            done_value = None if value is None else {"plan": value, "nodes": {}}
            self._op(done_ms, process=NEMESIS, type=outcome, f=f, value=done_value, **completion)

    def status(self, node: str, phase: str, at_ms: float, value: dict[str, Any] | None,
               done_ms: float | None = None) -> None:
        """A status snapshot of ``node`` (``phase`` before or after the polls); ``value=None`` fails."""
        common = {"process": CONVERGENCE, "f": "status", "node": node, "phase": phase}
        self._op(at_ms, type=INVOKE, **common)
        done = at_ms + 1 if done_ms is None else done_ms
        if value is None:
            self._op(done, type=FAIL, error="connection refused", **common)
        else:
            self._op(done, type=OK, value=value, **common)

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


def generate(ops: int = 2_000, **options: Any) -> tuple[dict[str, Any], list[Op]]:
    """Simulate a test of ``ops`` client operations against a correct store (see
    :func:`dynacheck.simulation.generate` for the options); returns ``(test, history)``."""
    from dynacheck.simulation import generate as simulate  # the simulation builds on this module's clocks

    return simulate(ops, **options)
