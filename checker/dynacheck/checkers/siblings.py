"""siblings: no acknowledged write is lost (Jepsen's set-full checker, over Dynamo's siblings).

A Dynamo store keeps concurrent versions as siblings and lets the client merge them (Dynamo §4.4),
so every element whose add (or register write) was acknowledged must be present in the final reads
of its key, done after the faults healed and the replicas converged. Per key we report:

* ``lost``: acknowledged, yet absent from some ok final read — invalid;
* ``unexpected``: read, yet its add failed (certainly not written) or was never attempted — invalid;
* ``stale``: acknowledged and present at the end, but missing from some read invoked after the add
  completed — allowed for an eventually consistent store, reported;
* ``never_read``: acknowledged on a key that no final read answered — unknown;
* ``recovered``: its add's outcome was unknown (info, or no completion) and a read saw it;
* the *stable latency* of each element present at the end: from the add's invocation to the first read
  after which every read (by invocation time) contains it, like set-full's stable-latency.

Cost: one pass over the history, then per key one forward sweep over the reads in invocation order
with set algebra (C-level work proportional to the size of each read) and bisection.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import defaultdict
from pathlib import Path
from typing import Any

from dynacheck.history import FAIL, INFO, OK, Op, gc_paused, is_client, pairs

SAMPLE = 50
QUANTILES = (0, 0.5, 0.95, 0.99, 1)
WRITES = ("add", "write")
#: When an element was attempted more than once, the most informative outcome wins.
_RANK = {OK: 3, INFO: 2, None: 1, FAIL: 0}


def quantiles(values: list[float]) -> dict[str, float]:
    """Nearest-rank quantiles ``{"0", "0.5", "0.95", "0.99", "1"}`` of ``values`` (ms); {} when empty."""
    if not values:
        return {}
    ordered = sorted(values)
    return {str(q): round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3) for q in QUANTILES}


def _ms(ns: int | None) -> float | None:
    return None if ns is None else round(ns / 1e6, 3)


class _Add:
    """One attempted element: its invocation time, outcome (None: never completed) and completion time."""

    __slots__ = ("invoke", "outcome", "done")

    def __init__(self, invoke: int, outcome: str | None, done: int | None):
        self.invoke, self.outcome, self.done = invoke, outcome, done


class _Read:
    """One ok read; ``values`` is the history's own list of elements (sets are built one read at a time,
    so a history of big carts never holds a set per read)."""

    __slots__ = ("invoke", "done", "values", "final", "node")

    def __init__(self, invoke: int, done: int, values: list[Any], final: bool, node: Any):
        self.invoke, self.done, self.values, self.final, self.node = invoke, done, values, final, node


def _collect(history: list[Op]) -> tuple[dict[str, dict[Any, _Add]], dict[str, list[_Read]]]:
    adds: dict[str, dict[Any, _Add]] = defaultdict(dict)
    reads: dict[str, list[_Read]] = defaultdict(list)
    for invoke, completion in pairs(history):
        if not is_client(invoke):
            continue
        f, key = invoke.get("f"), str(invoke.get("key"))
        outcome = completion["type"] if completion else None
        if f in WRITES:
            element = invoke.get("value")
            known = adds[key].get(element)
            if known is None or _RANK.get(outcome, 1) > _RANK.get(known.outcome, 1):
                adds[key][element] = _Add(invoke["time"], outcome, completion["time"] if completion else None)
        elif f == "read" and outcome == OK:
            final = bool(invoke.get("final") or completion.get("final"))
            reads[key].append(_Read(invoke["time"], completion["time"], completion.get("value") or [],
                                    final, completion.get("node", invoke.get("node"))))
    return adds, reads


class _Totals:
    """What the per-key sweeps accumulate: counts, bounded samples and latencies."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = defaultdict(int)
        self.samples: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.stable: list[float] = []
        self.lost_latencies: list[float] = []
        self.lost_by_key: dict[str, int] = {}

    def note(self, kind: str, entry: dict[str, Any]) -> None:
        self.counts[kind] += 1
        if len(self.samples[kind]) < SAMPLE:
            self.samples[kind].append(entry)


def _check_key(key: str, adds: dict[Any, _Add], reads: list[_Read], totals: _Totals) -> None:
    reads.sort(key=lambda read: read.invoke)
    invokes = [read.invoke for read in reads]
    acked = {element for element, add in adds.items() if add.outcome == OK}
    possible = {element for element, add in adds.items() if add.outcome != FAIL}
    finals = [(read, set(read.values)) for read in reads if read.final]
    in_all_finals = set.intersection(*(elements for _, elements in finals)) if finals else set()
    # Elements present at the end whose add may have happened: their stable point and staleness.
    candidates = in_all_finals & possible
    sweep = _Sweep(reads, candidates, possible, possible - acked, adds)

    for element in _ordered(set(sweep.unexpected)):
        add = adds.get(element)
        totals.note("unexpected", {"key": key, "element": element,
                                   "outcome": "never attempted" if add is None else FAIL,
                                   "first_read_ms": _ms(reads[sweep.unexpected[element]].invoke)})
    for element in _ordered(sweep.recovered):
        add = adds[element]
        totals.note("recovered", {"key": key, "element": element, "outcome": add.outcome or "no completion",
                                  "add_invoke_ms": _ms(add.invoke)})
    if not finals:
        for element in sorted(acked, key=lambda e: adds[e].done):
            totals.note("never_read", {"key": key, "element": element, "add_ok_ms": _ms(adds[element].done)})
        return

    lost = acked - in_all_finals
    if lost:
        totals.lost_by_key[key] = len(lost)
    last_seen = _last_reads_containing(reads, lost)
    for element in sorted(lost, key=lambda e: adds[e].done):
        add = adds[element]
        seen_at = last_seen.get(element)
        lost_at = bisect_right(invokes, add.invoke) if seen_at is None else seen_at + 1
        if lost_at < len(reads):
            totals.lost_latencies.append(max(0, reads[lost_at].invoke - add.invoke) / 1e6)
        totals.note("lost", {"key": key, "element": element, "add_invoke_ms": _ms(add.invoke),
                             "add_ok_ms": _ms(add.done),
                             "last_seen_ms": _ms(reads[seen_at].invoke) if seen_at is not None else None,
                             "missing_from_final_reads_on": sorted(
                                 str(read.node) for read, elements in finals if element not in elements)})

    for element in sorted(candidates, key=lambda e: adds[e].invoke):
        add = adds[element]
        missing_at = sweep.last_missing.get(element, -1)
        stable_at = max(bisect_right(invokes, add.invoke), missing_at + 1)
        if stable_at < len(reads):
            totals.stable.append(max(0, reads[stable_at].invoke - add.invoke) / 1e6)
        if add.outcome == OK and missing_at >= 0 and reads[missing_at].invoke > add.done:
            totals.note("stale", {"key": key, "element": element, "add_ok_ms": _ms(add.done),
                                  "last_missing_read_ms": _ms(reads[missing_at].invoke),
                                  "stable_ms": _ms(reads[stable_at].invoke) if stable_at < len(reads) else None})


def _ordered(elements: set[Any]) -> list[Any]:
    try:
        return sorted(elements)
    except TypeError:  # mixed types in a malformed history: any stable order will do
        return sorted(elements, key=repr)


class _Sweep:
    """One forward pass over a key's reads in invocation order, one set per read at a time.

    ``live`` holds the candidates whose add was invoked before the current read; a read that lacks some
    of them is their latest miss so far (a C-level subset test, then a difference only when it fails).
    Elements outside ``possible`` are unexpected (first read that had them); elements of adds with an
    unknown outcome that a read had are recovered."""

    def __init__(self, reads: list[_Read], candidates: set[Any], possible: set[Any], unknown: set[Any],
                 adds: dict[Any, _Add]):
        self.last_missing: dict[Any, int] = {}
        self.unexpected: dict[Any, int] = {}
        self.recovered: set[Any] = set()
        by_invoke = sorted(candidates, key=lambda e: adds[e].invoke)
        live: set[Any] = set()
        position = 0
        for index, read in enumerate(reads):
            elements = set(read.values)
            if not elements.issubset(possible):
                for element in elements - possible:
                    self.unexpected.setdefault(element, index)
            if unknown:
                self.recovered |= elements & unknown
            while position < len(by_invoke) and adds[by_invoke[position]].invoke < read.invoke:
                live.add(by_invoke[position])
                position += 1
            if not live.issubset(elements):
                for element in live - elements:
                    self.last_missing[element] = index


def _last_reads_containing(reads: list[_Read], elements: set[Any]) -> dict[Any, int]:
    """Element -> index of the last read holding it, by a backward sweep that stops once all are found."""
    remaining, found = set(elements), {}
    for index in range(len(reads) - 1, -1, -1):
        if not remaining:
            break
        present = remaining.intersection(reads[index].values)
        for element in present:
            found[element] = index
        remaining -= present
    return found


def check(test: dict[str, Any], history: list[Op], run_dir: Path | None = None) -> dict[str, Any]:
    """Set-full verdict over every key: False on lost or unexpected elements; unknown when nothing was
    acknowledged or some acknowledged element could never be checked by a final read; else True."""
    with gc_paused():
        adds, reads = _collect(history)
        totals = _Totals()
        for key in sorted(set(adds) | set(reads)):
            _check_key(key, adds.get(key, {}), reads.get(key, []), totals)

    outcomes = [add.outcome for per_key in adds.values() for add in per_key.values()]
    acknowledged = outcomes.count(OK)
    counts = totals.counts
    if counts["lost"] or counts["unexpected"]:
        valid: bool | str = False
    elif not acknowledged or counts["never_read"]:
        valid = "unknown"
    else:
        valid = True
    result: dict[str, Any] = {
        "valid": valid,
        "workload": test.get("workload"), "mode": test.get("mode"),
        "keys": len(set(adds) | set(reads)),
        "attempt_count": len(outcomes), "acknowledged_count": acknowledged,
        "fail_count": outcomes.count(FAIL), "info_count": len(outcomes) - acknowledged - outcomes.count(FAIL),
        "read_count": sum(len(r) for r in reads.values()),
        "final_read_count": sum(read.final for r in reads.values() for read in r),
        "stable_count": len(totals.stable),
        "stable_latencies": quantiles(totals.stable), "lost_latencies": quantiles(totals.lost_latencies),
        "lost_by_key": dict(sorted(totals.lost_by_key.items())),
    }
    for kind in ("lost", "unexpected", "stale", "never_read", "recovered"):
        result[f"{kind}_count"] = counts[kind]
        result[kind] = totals.samples[kind]
    return result
