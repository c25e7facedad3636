"""quorum: with R + W > N, a read that follows an acknowledged write in quiet times sees it (Dynamo §4.5).

A write acknowledged by W of a key's N replicas and a read answered by R of them share a replica when
R + W > N, as long as both reach the key's own N replicas: no fault in the way, every node up and the
failure detectors agreeing again. This checker judges exactly those times.

*Quiet windows.* A fault is active from its start's invoke to the completion of the stop that closed it
(``faults.active_intervals``: a skipped start, or one that completed ``fail``, was never active; a stop
that did not complete ``ok`` leaves it active, up to the end of the history); every ``stop-<fault>``
counts as activity from its invoke to its completion too, even a heal with nothing left to stop (it
acts on the nodes). A quiet window is a stretch of time with no such activity in which none happened
during the ``quiet_margin`` seconds before (``test.json``, default 3.0: failure detection, hinted
handoff and gossip settle): from the start of the history, or ``quiet_margin`` after the activity
ended, up to the next start's (or stop's) invoke.

*The rule.* For each key and window: every ``add`` (or ``write``) whose invoke and ``ok`` completion both
lie inside the window, and every ``ok`` read (final reads too) whose invoke and completion both lie in
the same window and whose invoke comes after that write's completion: the write's element must be among
the read's elements, unless a remove of it (ok or info: it may have happened) was invoked before the
read completed (only an item a read returned is removed, so that remove followed the add). One missing
is an anomaly (invalid). With R + W <= N the rule does not apply
(``applies: false``, valid). lww mode is judged the same way: a write that a later read does not show
was lost, whichever mechanism lost it.

Each anomaly says whether some version the read returned was the write's or had seen its dot
(``version_seen``): when it had, the read reached the write and a merge lost the element (see the
causality checker); when not, the read's quorum missed the write.

*Cut off* (any R, W, N): a quorum needs W (or R) distinct nodes, stand-ins included (sloppy
quorum), and a node can only count those it can talk to. During a partition (from its start's ok
completion to its stop's invoke), the nodes a node can reach are those that drop none of its
packets and whose packets it does not drop, and a write it coordinates may be forwarded once, so
its acknowledgements come from at most the nodes within two such hops. An ``ok`` write served by a
node with fewer than W nodes within two hops (itself included), or an ``ok`` read with fewer than
R, for its whole duration, was acknowledged by fewer replicas than it claims: ``cut_off``, invalid.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from dynacheck.checkers.faults import nemesis_busy, read_nemesis
from dynacheck.history import NEMESIS, OK, HistoryIndex, Op, gc_paused

SAMPLE = 50
WRITES = ("add", "write")
#: Cart removes (``delete`` when the remove emptied the cart): the item is the completion's ``value``.
REMOVES = ("remove", "delete")
DEFAULT_QUIET_MARGIN_S = 3.0


def _ms(ns: int) -> float:
    return round(ns / 1e6, 3)


def quiet_windows(intervals: list[tuple[str, int, int]], end: int, margin_ns: int, origin: int = 0
                  ) -> list[tuple[int, int]]:
    """``(from_ns, to_ns)`` of each quiet window, a half-open interval: no fault active in it, nor in
    the ``margin_ns`` before it; the last runs to ``end`` included."""
    windows: list[tuple[int, int]] = []
    free_from = origin
    for _, start, stop in sorted(intervals, key=lambda interval: interval[1]):
        if start > free_from:
            windows.append((free_from, start))
        free_from = max(free_from, stop + margin_ns)
    if free_from <= end:
        windows.append((free_from, end + 1))
    return windows


class Locator:
    """Which quiet window a time lies in (bisection over the window starts)."""

    def __init__(self, windows: list[tuple[int, int]]):
        self.windows = windows
        self.starts = [start for start, _ in windows]

    def window(self, time: int) -> int | None:
        index = bisect_right(self.starts, time) - 1
        return index if index >= 0 and time < self.windows[index][1] else None

    def span(self, invoked: int, completed: int) -> int | None:
        """The window holding both times, or None."""
        first = self.window(invoked)
        return first if first is not None and first == self.window(completed) else None


def _seen(versions: list[dict[str, Any]] | None, dot: list[Any] | None) -> bool | None:
    """True when one of a read's versions is ``dot``'s or has seen it; None when either is unknown."""
    if not versions or not dot:
        return None
    actor, counter = dot[0], dot[1]
    for version in versions:
        clock = version.get("clock") or {}
        if (list(version.get("dot") or ()) == [actor, counter] or counter <= (clock.get("vector") or {}).get(actor, 0)
                or [actor, counter] in (clock.get("cloud") or ())):
            return True
    return False


def _collect(client_pairs: list[tuple[Op, Op | None]], locate: Locator
             ) -> tuple[dict[tuple[str, int], list[tuple[Any, ...]]], dict[tuple[str, int], list[tuple[Any, ...]]]]:
    """Per (key, window): the acknowledged writes ``(done, invoke, element, node, dot)`` and the ok reads
    ``(invoke, done, elements, node, final, versions)`` lying wholly inside it."""
    writes: dict[tuple[str, int], list[tuple[Any, ...]]] = defaultdict(list)
    reads: dict[tuple[str, int], list[tuple[Any, ...]]] = defaultdict(list)
    for invoke, completion in client_pairs:
        if completion is None or completion["type"] != OK:
            continue
        window = locate.span(invoke["time"], completion["time"])
        if window is None:
            continue
        f, key = invoke.get("f"), str(invoke.get("key"))
        node = completion.get("node", invoke.get("node"))  # the client may have failed over
        if f in WRITES:
            dot = (completion.get("version") or {}).get("dot")
            writes[key, window].append((completion["time"], invoke["time"], invoke.get("value"), node, dot))
        elif f == "read":
            reads[key, window].append((invoke["time"], completion["time"], completion.get("value") or [], node,
                                       bool(invoke.get("final") or completion.get("final")),
                                       completion.get("versions")))
    return writes, reads


def check(test: dict[str, Any], history: list[Op], run_dir: Path | None = None,
          index: HistoryIndex | None = None) -> dict[str, Any]:
    """Quorum overlap in quiet windows: False when a read invoked after a write's acknowledgement, in
    the same quiet window, lacks its element; True otherwise, or when R + W <= N (``applies: false``)."""
    n, r, w = (test.get(name) for name in ("n", "r", "w"))
    base: dict[str, Any] = {"n": n, "r": r, "w": w, "mode": test.get("mode")}
    if not all(isinstance(value, int) for value in (n, r, w)):
        return {"valid": True, "applies": False, **base, "reason": "test.json does not give n, r and w"}
    index = HistoryIndex(history) if index is None else index
    with gc_paused():
        end = index.end
        log = read_nemesis(index.ops_of(NEMESIS))
        # Every node of the run: one that joined after a partition was planned is in no grudge.
        nodes = {*(test.get("nodes") or ()), *(test.get("spare_nodes") or ())}
        cut_count, cut_samples, cut_judged = cut_off(index.client_pairs, r, w,
                                                     partition_intervals(index.ops_of(NEMESIS), end), nodes)
    base.update(cut_off_count=cut_count, cut_off_judged=cut_judged, cut_off=cut_samples)
    if r + w <= n:
        return {"valid": not cut_count, "applies": False, **base,
                "reason": f"R + W = {r + w} <= N = {n}: a read quorum need not meet a write quorum"}
    margin_s = float(test.get("quiet_margin", DEFAULT_QUIET_MARGIN_S))
    with gc_paused():
        windows = quiet_windows(nemesis_busy(log, end), end, int(margin_s * 1e9))
        writes, reads = _collect(index.client_pairs, Locator(windows))
        tally = _Tally(len(windows), removals(index.client_pairs))
        for slot in sorted(set(writes) | set(reads)):
            tally.judge(slot, sorted(writes.get(slot, ()), key=lambda write: write[0]),
                        sorted(reads.get(slot, ()), key=lambda read: read[0]))
    # Counts first: the web page's one-line summary shows the first few.
    result: dict[str, Any] = {
        "valid": not tally.anomaly_count and not cut_count, "applies": True, "anomaly_count": tally.anomaly_count,
        "missing_elements": len(tally.missing), "window_count": len(windows),
        "reads_judged": tally.reads_judged, "adds_judged": tally.adds_judged,
        "removes_excused": tally.removes_excused,
        "quiet_ms": _ms(sum(stop - start for start, stop in windows)),
        "reads_in_windows": sum(len(entries) for entries in reads.values()),
        "adds_in_windows": sum(len(entries) for entries in writes.values()),
        **base, "quiet_margin_s": margin_s, "anomalies": tally.samples,
        "windows": [{"start_ms": _ms(start), "end_ms": _ms(stop), "adds": tally.per_window[i][0],
                     "reads": tally.per_window[i][1], "anomalies": tally.per_window[i][2]}
                    for i, (start, stop) in enumerate(windows)][:SAMPLE],
    }
    if not tally.reads_judged:
        result["exercised"] = False  # no read followed an acknowledged write inside a window: nothing was tested
    return result


def partition_intervals(history: list[Op], end: int | None = None) -> list[tuple[int, int, dict[str, list[str]]]]:
    """``(from_ns, to_ns, grudge)`` of each set of partition rules in force: from a start's ok
    completion to the invoke of the next start or stop of partitions (or the end of the history:
    ``end`` when given, so ``history`` may be the nemesis ops alone).

    Not ``faults.read_nemesis``'s per-fault intervals: the partition nemesis keeps one set of rules
    on each host (one iptables chain), so a start replaces whatever rules were there and any stop
    flushes them all, whichever planned fault it names."""
    intervals: list[tuple[int, int, dict[str, list[str]]]] = []
    plan: dict[str, Any] = {}
    active: tuple[int, dict[str, list[str]]] | None = None
    last = 0
    for op in history:
        last = max(last, op.get("time", 0))
        if op.get("process") != "nemesis" or op.get("f") not in ("start-partition", "stop-partition"):
            continue
        if op["type"] == "invoke" and active is not None:
            intervals.append((active[0], op["time"], active[1]))
            active = None
        if op["f"] == "start-partition":
            if op["type"] == "invoke":
                plan = op.get("value") if isinstance(op.get("value"), dict) else {}
            elif op["type"] == OK and plan.get("grudge"):
                active = (op["time"], plan["grudge"])
    if active is not None:
        intervals.append((active[0], (last if end is None else end) + 1, active[1]))
    return intervals


def neighbours(grudge: dict[str, list[str]], node: str, everyone: set[str]) -> set[str]:
    """The nodes of ``everyone`` other than ``node`` that exchange packets with it under ``grudge``:
    neither drops the other's (a one-way drop breaks TCP both ways) (pure)."""
    return {other for other in everyone
            if other != node and other not in grudge.get(node, ()) and node not in grudge.get(other, ())}


def within_two_hops(grudge: dict[str, list[str]], node: str, others: Iterable[str] = ()) -> set[str]:
    """The nodes ``node`` can reach directly or through one other node under ``grudge`` (pure).
    ``others``: nodes the grudge may not name (one that joined after the partition was planned
    exchanges packets with everyone: no rule drops its traffic)."""
    everyone = set(grudge) | {node} | set(others)
    first = neighbours(grudge, node, everyone)
    return {node} | first | {far for near in first for far in neighbours(grudge, near, everyone)}


def cut_off(client_pairs: list[tuple[Op, Op | None]], r: int, w: int,
            intervals: list[tuple[int, int, dict[str, list[str]]]],
            nodes: Iterable[str] = ()) -> tuple[int, list[dict[str, Any]], int]:
    """Ok writes (reads) served, for their whole duration, by a node that could reach fewer than W
    (R) nodes: (count, samples, ops judged). ``client_pairs``: the client ops' (invoke, completion);
    ``nodes``: every node of the run (members and spares), the grudges' or not."""
    nodes = frozenset(nodes)
    if not intervals:
        return 0, [], 0
    starts = [start for start, _, _ in intervals]
    count, samples, judged = 0, [], 0
    for invoke, completion in client_pairs:
        if completion is None or completion["type"] != OK:
            continue
        f = invoke.get("f")
        needed = w if f in WRITES else r if f == "read" else None
        index = bisect_right(starts, invoke["time"]) - 1
        if needed is None or index < 0 or completion["time"] >= intervals[index][1]:
            continue
        node = completion.get("node", invoke.get("node"))
        judged += 1
        reach = within_two_hops(intervals[index][2], node, nodes)
        if len(reach) < needed:
            count += 1
            if len(samples) < SAMPLE:
                samples.append({"key": invoke.get("key"), "f": f, "element": invoke.get("value"), "node": node,
                                "reachable": sorted(reach), "needed": needed,
                                "invoke_ms": _ms(invoke["time"]), "ok_ms": _ms(completion["time"])})
    return count, samples, judged


def removals(client_pairs: list[tuple[Op, Op | None]]) -> dict[tuple[str, Any], int]:
    """(key, item) -> the earliest invoke of a remove of it that may have happened (not ``fail``)."""
    earliest: dict[tuple[str, Any], int] = {}
    for invoke, completion in client_pairs:
        if (invoke.get("f") in REMOVES and completion is not None
                and completion["type"] != "fail" and completion.get("value") is not None):
            slot = (str(invoke.get("key")), completion["value"])
            earliest[slot] = min(invoke["time"], earliest.get(slot, invoke["time"]))
    return earliest


class _Tally:
    """Counts and samples of the per-(key, window) sweeps."""

    def __init__(self, windows: int, removed: dict[tuple[str, Any], int] | None = None):
        #: (key, item) -> when its first possible remove was invoked: not required of reads after that.
        self.removed = removed or {}
        self.removes_excused = 0
        self.adds_judged = self.reads_judged = self.anomaly_count = 0
        self.missing: set[tuple[str, Any]] = set()
        self.samples: list[dict[str, Any]] = []
        #: Per window: writes judged, reads judged, anomalies.
        self.per_window = [[0, 0, 0] for _ in range(windows)]

    def judge(self, slot: tuple[str, int], writes: list[tuple[Any, ...]], reads: list[tuple[Any, ...]]) -> None:
        """Sweep one key's reads of one window in invocation order, requiring every element acknowledged
        before each read's invoke (a subset test per read; a difference only when it fails)."""
        key, window = slot
        required: dict[Any, tuple[Any, ...]] = {}
        position = 0
        judged: set[Any] = set()
        for invoke, read_done, values, node, final, versions in reads:
            while position < len(writes) and writes[position][0] < invoke:
                required.setdefault(writes[position][2], writes[position])
                position += 1
            if not required:
                continue
            self.reads_judged += 1
            self.per_window[window][1] += 1
            judged.update(required)
            present = set(values)
            if present.issuperset(required):
                continue
            missing = set(required) - present
            excused = {e for e in missing if self.removed.get((key, e), read_done + 1) < read_done}
            self.removes_excused += len(excused)
            for element in sorted(missing - excused, key=lambda e: required[e][0]):
                done, write_invoke, _, write_node, dot = required[element]
                self.anomaly_count += 1
                self.per_window[window][2] += 1
                self.missing.add((key, element))
                if len(self.samples) < SAMPLE:
                    self.samples.append({"key": key, "element": element, "add_invoke_ms": _ms(write_invoke),
                                         "add_ok_ms": _ms(done), "add_node": write_node,
                                         "read_invoke_ms": _ms(invoke), "node": node, "final": final,
                                         "window": window, "version_seen": _seen(versions, dot)})
        self.adds_judged += len(judged)
        self.per_window[window][0] += len(judged)
