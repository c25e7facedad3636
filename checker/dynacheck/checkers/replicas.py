"""replicas: a replica never loses a version it held, unless it holds one that has seen it (Dynamo
§4.4: reconciliation only ever drops a version that another version descends from).

While the workload runs, the runner polls every hot key's ``/admin/replica`` on every node (process
``monitor``). For each node and key, between two consecutive ``ok`` polls, every version (dot) of the
first must still be there in the second, or be seen by one of the second's versions (its dot inside
that version's clock). A version that vanished without a descendant was dropped by this replica
(a merge, a read repair, a handoff or an anti-entropy exchange overwrote it), even when the other
replicas keep it and every final read shows it — the kind of loss redundancy hides from every
check of the final state.

Not judged, because the store may lose versions there by design:

* pairs of polls between which the node crashed (a ``kill``, ``disk``, ``power`` or ``corrupt``
  fault on it, active as the faults checker defines it): a crash may lose what
  was committed but not yet flushed, which a poll may already have seen (reads do not wait for the
  flush), and a lost disk loses everything;
* clusters with more nodes than N, where a node may hold a stand-in's copy and hand it off (with the
  ``membership`` nemesis: the times the members outnumber N);
* pairs of polls overlapping a membership change (a ``membership`` fault while active: from its start
  to the stop that found its transfers settled), on every node: a transfer moves a version to the
  partition's new owners and then drops it from the node that gave the partition up, so a version
  leaving a replica there is the ring changing, not a loss (the final reads and the convergence
  checker on the final ring judge that nothing was lost on the way);
* lww mode, where a newer timestamp replaces what it has not seen.

A version whose successors on the replica include one whose clock is at the context bound
(``max_context_entries``) may have been forgotten by truncation rather than dropped: counted as
``truncated``, not judged (the causality checker's rule).

A replica that held only tombstones and then holds none of them has reaped them (``dynamod.tombstones``:
a record whose every sibling is a tombstone goes once all replicas hold it), maybe written again
since (by a write whose context could not hold what was reaped): counted as ``reaped``, not
``vanished``. A store that reaps too early resurrects removed items, which the siblings checker
judges in the final reads.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from dynacheck.checkers.causality import DEFAULT_CONTEXT_BOUND, at_bound
from dynacheck.checkers.faults import read_nemesis
from dynacheck.history import INVOKE, MONITOR, NEMESIS, OK, HistoryIndex, Op, gc_paused

SAMPLE = 50
CRASHES = ("kill", "disk", "power", "corrupt")


def _ms(ns: int) -> float:
    return round(ns / 1e6, 3)


def crash_intervals(history: list[Op], end: int | None = None) -> dict[str, list[tuple[int, int]]]:
    """Per node, the times it may have crashed: a crash fault on it while active (``faults``' rule:
    from its start's invoke to the completion of the ok stop or heal that closed it, the end of the
    history when none did; skipped and failed starts never were). With ``end`` (the history's last
    time), ``history`` may be the nemesis ops alone."""
    end = max((op.get("time", 0) for op in history), default=0) if end is None else end
    intervals: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for kind, start, stop, nodes in ((fault.kind, fault.invoked, fault.stopped, fault.plan)
                                     for fault in read_nemesis(history).faults if fault.counts):
        if kind in CRASHES and isinstance(nodes, dict):
            for node in nodes.get("nodes", ()):
                intervals[node].append((start, stop if stop is not None else end + 1))
    return intervals


#: How a membership change that ran changes the number of members.
MEMBER_DELTA = {"join": 1, "leave": -1, "remove": -1, "replace": 0}


def membership_intervals(history: list[Op], initial: int, n: int | None, end: int | None = None
                         ) -> list[tuple[int, int]]:
    """When versions may leave a replica because the membership changed: each membership fault while
    active (``faults``' rule), and the times between them when the members outnumber ``n`` (counting
    from ``initial``; a change whose outcome is unknown leaves the count unknown: to the end). With
    ``end`` (the history's last time), ``history`` may be the nemesis ops alone."""
    end = (max((op.get("time", 0) for op in history), default=0) if end is None else end) + 1
    intervals: list[tuple[int, int]] = []
    members, since = initial, 0
    for fault in read_nemesis(history).faults:
        if fault.kind != "membership" or not fault.counts:
            continue
        until = fault.stopped if fault.stopped is not None else end
        intervals.append((fault.invoked, until))
        if isinstance(n, int) and members > n:
            intervals.append((since, fault.invoked))
        action = fault.plan.get("action") if isinstance(fault.plan, dict) else None
        if fault.status != "ran" or action not in MEMBER_DELTA:
            intervals.append((fault.invoked, end))
            return intervals
        members, since = members + MEMBER_DELTA[action], until
    if isinstance(n, int) and members > n:
        intervals.append((since, end))
    return intervals


def _seen_by(dot: tuple[Any, Any], siblings: list[dict[str, Any]]) -> bool:
    actor, counter = dot
    for sibling in siblings:
        if tuple(sibling.get("dot") or ()) == dot:
            return True
        clock = sibling.get("clock") or {}
        if counter <= (clock.get("vector") or {}).get(actor, 0) or [actor, counter] in (clock.get("cloud") or ()):
            return True
    return False


def check(test: dict[str, Any], history: list[Op], run_dir: Path | None = None,
          index: HistoryIndex | None = None) -> dict[str, Any]:
    """False when a replica lost a version with nothing that descends from it; True otherwise, or
    when the rule does not apply (``applies: false`` with the reason)."""
    nodes = list(test.get("nodes") or [])
    n = test.get("n")
    if test.get("mode") == "lww":
        return {"valid": True, "applies": False, "reason": "lww mode replaces versions it has not seen"}
    if isinstance(n, int) and nodes and len(nodes) > n:
        return {"valid": True, "applies": False,
                "reason": f"{len(nodes)} nodes > N = {n}: a stand-in hands its copies off"}
    index = HistoryIndex(history) if index is None else index
    with gc_paused():
        nemesis = index.ops_of(NEMESIS)
        crashes = crash_intervals(nemesis, index.end)
        changes = membership_intervals(nemesis, len(nodes), n if isinstance(n, int) else None, index.end)
        polls: dict[tuple[str, str], list[tuple[int, int, list[dict[str, Any]]]]] = defaultdict(list)
        invoked: dict[tuple[str, str], int] = {}
        for op in index.ops_of(MONITOR):
            if op.get("f") != "replica":
                continue
            slot = (str(op.get("node")), str(op.get("key")))
            if op["type"] == INVOKE:
                invoked[slot] = op["time"]
            elif op["type"] == OK and slot in invoked:
                polls[slot].append((invoked.pop(slot), op["time"], op.get("value") or []))
        judged = vanished_count = membership_skipped = reaped_count = truncated_count = 0
        bound = int(test.get("max_context_entries") or DEFAULT_CONTEXT_BOUND)
        samples: list[dict[str, Any]] = []
        for (node, key), entries in sorted(polls.items()):
            for (_, first_done, before), (second_invoke, second_done, after) in zip(entries, entries[1:],
                                                                                      strict=False):
                # A crash overlapping the time between the two reads of the replica: not judged.
                start = first_done - 1
                if any(begin <= second_done and start <= finish for begin, finish in crashes.get(node, ())):
                    continue
                if any(begin <= second_done and start <= finish for begin, finish in changes):
                    membership_skipped += 1
                    continue
                judged += 1
                if before and all(sibling.get("deleted") for sibling in before):
                    # Reaped, and maybe written again since (a new write's context no longer holds
                    # what was reaped): only a live version can vanish.
                    reaped_count += sum(1 for sibling in before if not _seen_by(tuple(sibling.get("dot") or ()), after))
                    continue
                for sibling in before:
                    dot = tuple(sibling.get("dot") or ())
                    if len(dot) == 2 and not _seen_by(dot, after):
                        if any(at_bound(later.get("clock"), bound) for later in after):
                            truncated_count += 1
                            continue
                        vanished_count += 1
                        if len(samples) < SAMPLE:
                            samples.append({"node": node, "key": key, "dot": f"{dot[0]}/{dot[1]}",
                                            "held_ms": _ms(first_done), "gone_ms": _ms(second_invoke),
                                            "elements": (sibling.get("elements") or [])[:20]})
    result: dict[str, Any] = {"valid": not vanished_count, "applies": True, "vanished_count": vanished_count,
                              "pairs_judged": judged, "polls": sum(len(entries) for entries in polls.values()),
                              "reaped_count": reaped_count, "truncated_count": truncated_count,
                              "vanished": samples}
    if changes:
        result["pairs_not_judged_membership"] = membership_skipped
    if not judged:
        result["exercised"] = False
    return result
