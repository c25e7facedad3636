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

import gc
from bisect import bisect_right
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dynacheck.history import FAIL, INFO, OK, Op, is_client, pairs

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



@contextmanager
def gc_paused() -> Iterator[None]:
    """Suspend the cyclic garbage collector: a loaded history is millions of objects that every full
    collection would rescan while a checker allocates its indexes (it halves the checking time)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class _Add:
    """One attempted element: its invocation time, outcome (None: never completed) and completion time."""

    __slots__ = ("invoke", "outcome", "done")

    def __init__(self, invoke: int, outcome: str | None, done: int | None):
        self.invoke, self.outcome, self.done = invoke, outcome, done


class _Read:
    __slots__ = ("invoke", "done", "elements", "final", "node")

    def __init__(self, invoke: int, done: int, elements: set[Any], final: bool, node: Any):
        self.invoke, self.done, self.elements, self.final, self.node = invoke, done, elements, final, node


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
            if known is None or _RANK[outcome] > _RANK[known.outcome]:
                adds[key][element] = _Add(invoke["time"], outcome, completion["time"] if completion else None)
        elif f == "read" and outcome == OK:
            final = bool(invoke.get("final") or completion.get("final"))
            reads[key].append(_Read(invoke["time"], completion["time"], set(completion.get("value") or ()),
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

    def wants(self, kind: str) -> bool:
        return len(self.samples[kind]) < SAMPLE

    def note(self, kind: str, entry: dict[str, Any]) -> None:
        self.counts[kind] += 1
        if len(self.samples[kind]) < SAMPLE:
            self.samples[kind].append(entry)


def _check_key(key: str, adds: dict[Any, _Add], reads: list[_Read], totals: _Totals) -> None:
    reads.sort(key=lambda read: read.invoke)
    invokes = [read.invoke for read in reads]
    finals = [read for read in reads if read.final]
    acked = {element for element, add in adds.items() if add.outcome == OK}
    seen: set[Any] = set().union(*(read.elements for read in reads))

    possible = {element for element, add in adds.items() if add.outcome != FAIL}
    for element in _ordered(seen - possible):
        add = adds.get(element)
        if totals.wants("unexpected"):
            first = next(read for read in reads if element in read.elements)
            totals.note("unexpected", {"key": key, "element": element,
                                       "outcome": "never attempted" if add is None else FAIL,
                                       "first_read_ms": _ms(first.invoke)})
        else:
            totals.note("unexpected", {})
    for element in _ordered(seen & possible - acked):
        add = adds[element]
        totals.note("recovered", {"key": key, "element": element, "outcome": add.outcome or "no completion",
                                  "add_invoke_ms": _ms(add.invoke)})
    if not finals:
        for element in sorted(acked, key=lambda e: adds[e].done):
            totals.note("never_read", {"key": key, "element": element, "add_ok_ms": _ms(adds[element].done)})
        return

    in_all_finals = set.intersection(*(read.elements for read in finals))
    lost = acked - in_all_finals
    if lost:
        totals.lost_by_key[key] = len(lost)
    last_seen = _last_reads_containing(reads, lost)
    for element in sorted(lost, key=lambda e: adds[e].done):
        add = adds[element]
        seen_at = last_seen.get(element)
        lost_at = reads[seen_at + 1] if seen_at is not None and seen_at + 1 < len(reads) else None
        if seen_at is None:
            first = bisect_right(invokes, add.invoke)
            lost_at = reads[first] if first < len(reads) else None
        if lost_at is not None:
            totals.lost_latencies.append(max(0, lost_at.invoke - add.invoke) / 1e6)
        totals.note("lost", {"key": key, "element": element, "add_invoke_ms": _ms(add.invoke),
                             "add_ok_ms": _ms(add.done),
                             "last_seen_ms": _ms(reads[seen_at].invoke) if seen_at is not None else None,
                             "missing_from_final_reads_on": sorted(
                                 str(r.node) for r in finals if element not in r.elements)})

    # Elements present at the end whose add may have happened: their stable point and staleness.
    candidates = {e for e in in_all_finals if e in adds and adds[e].outcome != FAIL}
    last_missing = _last_reads_missing(reads, candidates, adds)
    for element in sorted(candidates, key=lambda e: adds[e].invoke):
        add = adds[element]
        missing_at = last_missing.get(element, -1)
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


def _last_reads_missing(reads: list[_Read], candidates: set[Any], adds: dict[Any, _Add]) -> dict[Any, int]:
    """Element -> index of the last read invoked after its add's invocation that lacks it.

    One forward sweep: ``live`` holds the candidates invoked before the current read. Each read costs a
    C-level set difference, skipped when the read holds all of them (equal sizes after intersection)."""
    by_invoke = sorted(candidates, key=lambda e: adds[e].invoke)
    live: set[Any] = set()
    last: dict[Any, int] = {}
    position = 0
    for index, read in enumerate(reads):
        while position < len(by_invoke) and adds[by_invoke[position]].invoke < read.invoke:
            live.add(by_invoke[position])
            position += 1
        if len(read.elements) >= len(live) and live.issubset(read.elements):
            continue
        for element in live - read.elements:
            last[element] = index
    return last


def _last_reads_containing(reads: list[_Read], elements: set[Any]) -> dict[Any, int]:
    """Element -> index of the last read holding it, by a backward sweep that stops once all are found."""
    remaining, found = set(elements), {}
    for index in range(len(reads) - 1, -1, -1):
        if not remaining:
            break
        for element in remaining & reads[index].elements:
            found[element] = index
        remaining -= reads[index].elements
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
