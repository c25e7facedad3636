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

*Removes* (cart): a remove read the cart, dropped one item it read and wrote the rest with the context
(``f: "delete"`` on completion when it DELETEd the last one); its completion's ``value`` is the item.

* ``removed``: acknowledged, absent at the end, and some remove of it (ok or info: an info one may
  have happened) was attempted — allowed. Only an item a read returned is ever removed, so such a
  remove saw the add; without one, an absent acknowledged item is ``lost`` as before.
* Each ok remove with a version whose item is in some ok final read is judged against every final
  sibling holding the item, with the clocks the history records (``r`` the remove's version, ``f``
  the sibling): ``f`` concurrent with ``r`` (neither clock holds the other's dot) may hold it —
  ``concurrent``, allowed (an add that read the item before the remove wrote it back); ``f`` that
  descends from ``r`` may hold it only through a version ``c`` in ``f``'s past that holds the item
  (or whose elements the history does not give) and is concurrent with ``r`` — ``merged``, allowed
  (a read returned both and a write merged them); otherwise, or when ``r`` has seen ``f`` (a
  superseded version came back), the item was ``resurrected`` — invalid. A finding where a clock
  involved holds ``max_context_entries`` entries (``test.json``) is not judged (``remove_truncated``):
  a truncated context forgets dots by design, so a superseded version may come back. Ok removes
  whose item no final read has ``held``.

Cost: one pass over the history, then per key one forward sweep over the reads in invocation order
with set algebra (C-level work proportional to the size of each read) and bisection.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import defaultdict
from pathlib import Path
from typing import Any

from dynacheck.checkers.causality import DEFAULT_CONTEXT_BOUND, _has
from dynacheck.history import CONVERGENCE, FAIL, INFO, MONITOR, OK, HistoryIndex, Op, gc_paused, is_client

SAMPLE = 50
QUANTILES = (0, 0.5, 0.95, 0.99, 1)
WRITES = ("add", "write")
REMOVES = ("remove", "delete")
#: How a judged ok remove ended, from best to worst (a remove takes the worst over the final siblings).
REMOVE_OUTCOMES = ("held", "concurrent", "merged", "truncated", "resurrected")
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
    so a history of big carts never holds a set per read); ``versions`` only for final reads."""

    __slots__ = ("invoke", "done", "values", "final", "node", "versions")

    def __init__(self, invoke: int, done: int, values: list[Any], final: bool, node: Any,
                 versions: list[dict[str, Any]] | None = None):
        self.invoke, self.done, self.values, self.final, self.node = invoke, done, values, final, node
        self.versions = versions


class _Remove:
    """One attempted remove: the item (None: its read found none), outcome, times and the version it made."""

    __slots__ = ("element", "invoke", "done", "outcome", "dot", "clock", "deleted")

    def __init__(self, element: Any, invoke: int, completion: Op | None):
        self.element, self.invoke = element, invoke
        self.outcome = completion["type"] if completion else None
        self.done = completion["time"] if completion else None
        version = (completion or {}).get("version") or {}
        self.dot = tuple(version["dot"]) if version.get("dot") else None
        self.clock: dict[str, Any] | None = version.get("clock")
        self.deleted = bool(version.get("deleted")) or (completion or {}).get("f") == "delete"


#: What the history says about one version of a key with removes: (clock or None, elements or None).
Known = dict[tuple[Any, ...], list[Any]]


def _know(known: Known, dot: Any, clock: dict[str, Any] | None, elements: list[Any] | None) -> None:
    if not dot:
        return
    entry = known.setdefault(tuple(dot), [None, None])
    entry[0] = entry[0] or clock
    entry[1] = entry[1] if entry[1] is not None else elements


def _collect(history: list[Op], index: HistoryIndex) -> tuple[dict[str, dict[Any, _Add]], dict[str, list[_Read]],
                                                              dict[str, list[_Remove]], dict[str, Known]]:
    adds: dict[str, dict[Any, _Add]] = defaultdict(dict)
    reads: dict[str, list[_Read]] = defaultdict(list)
    removes: dict[str, list[_Remove]] = defaultdict(list)
    # Versions are only needed to judge removes: kept for the keys that have some.
    with_removes: set[str] = set()
    for invoke, completion in index.client_pairs:
        if invoke.get("f") == "remove":
            with_removes.add(str(invoke.get("key")))
        if completion is not None and completion.get("f") == "remove":
            with_removes.add(str(completion.get("key")))
    known: dict[str, Known] = defaultdict(dict)
    # The other processes' polls only tell versions, which only keys with removes need.
    for invoke, completion in index.pairs if with_removes else index.client_pairs:
        key = str(invoke.get("key"))
        if not is_client(invoke):
            if (key in with_removes and invoke.get("process") in (CONVERGENCE, MONITOR) and completion
                    and completion["type"] == OK and invoke.get("f") == "replica"):
                for sibling in completion.get("value") or ():
                    _know(known[key], sibling.get("dot"), sibling.get("clock"), sibling.get("elements"))
            continue
        f = invoke.get("f")
        outcome = completion["type"] if completion else None
        if key in with_removes and outcome == OK:
            version = completion.get("version") or {}
            elements = version.get("elements", [invoke.get("value")] if f == "write" else None)
            _know(known[key], version.get("dot"), version.get("clock"), elements)
            for dot in completion.get("supersedes") or ():
                _know(known[key], dot, None, None)
            for sibling in completion.get("versions") or ():
                _know(known[key], sibling.get("dot"), sibling.get("clock"), sibling.get("elements"))
        if f in REMOVES:
            removes[key].append(_Remove((completion or {}).get("value"), invoke["time"], completion))
        elif f in WRITES:
            element = invoke.get("value")
            attempted = adds[key].get(element)
            if attempted is None or _RANK.get(outcome, 1) > _RANK.get(attempted.outcome, 1):
                adds[key][element] = _Add(invoke["time"], outcome, completion["time"] if completion else None)
        elif f == "read" and outcome == OK:
            final = bool(invoke.get("final") or completion.get("final"))
            reads[key].append(_Read(invoke["time"], completion["time"], completion.get("value") or [],
                                    final, completion.get("node", invoke.get("node")),
                                    completion.get("versions") if final else None))
    return adds, reads, removes, known


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


class _Removals:
    """Judges a key's ok removes against its final siblings (see the module's *Removes*)."""

    def __init__(self, key: str, known: Known, bound: int):
        self.key, self.known, self.bound = key, known, bound

    def at_bound(self, clock: dict[str, Any] | None) -> bool:
        return bool(clock) and len(clock.get("vector") or {}) + len(clock.get("cloud") or ()) >= self.bound

    def judge(self, remove: _Remove, finals: list[_Read]) -> tuple[str, dict[str, Any]]:
        """The remove's outcome (one of ``REMOVE_OUTCOMES``) and the evidence for the worst sibling."""
        item, worst, evidence = remove.element, "held", {}
        for read in finals:
            if item not in read.values:
                continue
            versions = read.versions or []
            for sibling in versions:
                if item not in (sibling.get("elements") or ()):
                    continue
                verdict = self._sibling(remove, sibling, versions)
                if REMOVE_OUTCOMES.index(verdict) >= REMOVE_OUTCOMES.index(worst):
                    worst = verdict
                    evidence = {"sibling": _name(sibling.get("dot")), "node": str(read.node)}
            if not versions:  # a history without versions: present, yet nothing says how
                worst = max(worst, "truncated", key=REMOVE_OUTCOMES.index)
        return worst, evidence

    def _sibling(self, remove: _Remove, sibling: dict[str, Any], finals: list[dict[str, Any]]) -> str:
        rdot, rclock = remove.dot, remove.clock or {}
        fdot, fclock = tuple(sibling.get("dot") or ()), sibling.get("clock") or {}
        if not _has(fclock, rdot):
            if not (fdot and _has(rclock, fdot)):
                return "concurrent"
            # The remove had seen this sibling, yet it is final: a superseded version came back.
            return "truncated" if any(self.at_bound(f.get("clock")) for f in finals) else "resurrected"
        item = remove.element
        for dot, (clock, elements) in self.known.items():
            if dot in (rdot, fdot) or (elements is not None and item not in elements):
                continue
            if _has(fclock, dot) and not _has(rclock, dot) and not (clock and _has(clock, rdot)):
                return "merged"
        return "truncated" if self.at_bound(fclock) or self.at_bound(rclock) else "resurrected"


def _name(dot: Any) -> str | None:
    return f"{dot[0]}/{dot[1]}" if dot and len(dot) == 2 else None


def _check_removes(key: str, removes: list[_Remove], reads: list[_Read], judge: _Removals,
                   totals: _Totals) -> None:
    """Each ok remove with a version, on a key with final reads: held, or how its item survived."""
    finals = [read for read in reads if read.final]
    for remove in removes:
        if remove.outcome != OK or remove.element is None:
            continue
        if remove.dot is None or not finals:
            totals.counts["remove_unjudged"] += 1
            continue
        totals.counts["removes_judged"] += 1
        totals.counts["deletes_judged"] += remove.deleted
        outcome, evidence = judge.judge(remove, finals)
        totals.counts[f"remove_{outcome}"] += 1
        if outcome == "resurrected":
            totals.note("resurrected", {"key": key, "element": remove.element, "remove": _name(remove.dot),
                                        "delete": remove.deleted, "remove_ok_ms": _ms(remove.done), **evidence})


def _check_key(key: str, adds: dict[Any, _Add], reads: list[_Read], totals: _Totals,
               removes: list[_Remove] | None = None, judge: _Removals | None = None) -> None:
    removes = removes or []
    reads.sort(key=lambda read: read.invoke)
    invokes = [read.invoke for read in reads]
    acked = {element for element, add in adds.items() if add.outcome == OK}
    possible = {element for element, add in adds.items() if add.outcome != FAIL}
    finals = [(read, set(read.values)) for read in reads if read.final]
    in_all_finals = set.intersection(*(elements for _, elements in finals)) if finals else set()
    # Elements present at the end whose add may have happened: their stable point and staleness.
    candidates = in_all_finals & possible
    sweep = _Sweep(reads, candidates, possible, possible - acked, adds)
    if removes and judge is not None:
        _check_removes(key, removes, reads, judge, totals)

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

    possibly_removed = {remove.element for remove in removes if remove.outcome != FAIL}
    for element in sorted((acked - in_all_finals) & possibly_removed, key=lambda e: adds[e].done):
        totals.note("removed", {"key": key, "element": element, "add_ok_ms": _ms(adds[element].done)})
    lost = acked - in_all_finals - possibly_removed
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


def check(test: dict[str, Any], history: list[Op], run_dir: Path | None = None,
          index: HistoryIndex | None = None) -> dict[str, Any]:
    """Set-full verdict over every key: False on lost or unexpected elements; unknown when nothing was
    acknowledged or some acknowledged element could never be checked by a final read; else True."""
    bound = int(test.get("max_context_entries") or DEFAULT_CONTEXT_BOUND)
    with gc_paused():
        adds, reads, removes, known = _collect(history, HistoryIndex(history) if index is None else index)
        totals = _Totals()
        for key in sorted(set(adds) | set(reads) | set(removes)):
            _check_key(key, adds.get(key, {}), reads.get(key, []), totals, removes.get(key, []),
                       _Removals(key, known.get(key, {}), bound))

    outcomes = [add.outcome for per_key in adds.values() for add in per_key.values()]
    acknowledged = outcomes.count(OK)
    counts = totals.counts
    remove_outcomes = [remove.outcome for per_key in removes.values() for remove in per_key]
    if counts["lost"] or counts["unexpected"] or counts["resurrected"]:
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
        "remove_attempt_count": len(remove_outcomes), "remove_ok_count": remove_outcomes.count(OK),
        "remove_info_count": sum(outcome not in (OK, FAIL) for outcome in remove_outcomes),
        "remove_empty_count": sum(remove.element is None for r in removes.values() for remove in r),
        "delete_ok_count": sum(remove.deleted and remove.outcome == OK for r in removes.values() for remove in r),
        "removes_judged_count": counts["removes_judged"], "deletes_judged_count": counts["deletes_judged"],
        "remove_unjudged_count": counts["remove_unjudged"],
        "context_bound": bound,
    }
    for outcome in REMOVE_OUTCOMES[:-1]:
        result[f"remove_{outcome}_count"] = counts[f"remove_{outcome}"]
    for kind in ("lost", "unexpected", "stale", "never_read", "recovered", "removed", "resurrected"):
        result[f"{kind}_count"] = counts[kind]
        result[kind] = totals.samples[kind]
    return result
