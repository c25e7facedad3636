"""faults: the faults planned against the faults that ran (Jepsen's nemesis, audited).

``test.json``'s ``fault_schedule`` lists the planned faults (``id``, ``fault``, ``start``, ``stop`` in ns
since the workload started, ``plan``); the history's ``process: "nemesis"`` ops say what happened. A
nemesis op is paired with the next completion of the same ``f``; a ``stop-<fault>`` closes the started
fault whose plan ``id`` it carries, or, without an id (the final heal's ``value: "heal"``, old
histories), every fault of its kind still open. Each start ends in one status:

* ``ran``: its start completed ``ok``;
* ``skipped``: the nemesis decided at run time not to do it (the completion carries ``skipped``);
* ``no_effect``: it was seen to have no effect on some node (the op's ``effect`` says, per node it
  looked at, ``took_effect`` false: a clock that did not move, a killed node something else restarted
  before the stop, a paused node that answered; ``dynacheck.nemesis.effect``);
* ``failed``: the start completed ``fail``, or ``info`` with an ``error`` (it did not fully happen);
* ``unknown``: the start completed ``info`` without an error, or never completed;

and a planned fault no start matched (by ``id``, else the next of its kind in order) ``never_started``.
Findings about a fault's start may come with its stop (a kill is known to have held only then); a
stop seen to have no effect itself (a clock not back at 0) is ``stops_without_effect``, and a node
the nemesis could not look at (``took_effect`` null) is ``unverified``.

A fault is *active* from its start's invoke to the completion of the ``ok`` stop that closed it (the end
of the history when none did): a stop that failed may have left it in place. Skipped starts and starts
that completed ``fail`` were never active; every other start, even a partial one, may have broken
something, so it counts (``active_intervals``: the quorum checker's input).

For the ``membership`` nemesis, ``membership`` sums up the changes per action (``join``, ``leave``,
``replace``, ``remove``: planned, ran, and not run with why: a change refused with 409 while another was
in progress is skipped, nothing changed) and the members at the end; a change that did not run is a
warning, never a failure.

Verdict: True unless the history is malformed (a nemesis op that is not ``start-``/``stop-``, a
completion without its invoke, an ``f`` invoked again before it completed, a schedule entry without
``fault``/``start``/``stop``); what did not go to plan is reported in ``warnings``.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import attrs

from dynacheck.history import FAIL, INFO, INVOKE, NEMESIS, OK, HistoryIndex, Op

SAMPLE = 200
STATUSES = ("ran", "no_effect", "skipped", "failed", "unknown", "never_started")


@attrs.define
class RunFault:
    """One ``start-<fault>`` of the run and what became of it (times in ns)."""

    kind: str
    plan: Any
    invoked: int
    planned_id: Any = None
    completed: int | None = None
    outcome: str | None = None
    error: str | None = None
    skipped: str | None = None
    stop_invoked: int | None = None
    stopped: int | None = None
    stopped_by: str | None = None
    stop_errors: list[str] = attrs.Factory(list)
    #: Per node, why the fault was seen to have no effect, could not be looked at, or why its stop
    #: was seen to have no effect (from the ops' ``effect``).
    no_effect: dict[str, str] = attrs.Factory(dict)
    unverified: dict[str, str] = attrs.Factory(dict)
    stop_no_effect: dict[str, str] = attrs.Factory(dict)

    @property
    def status(self) -> str:
        """ran, no_effect, skipped, failed or unknown (see the module doc)."""
        if self.skipped is not None:
            return "skipped"
        if self.no_effect and self.outcome != FAIL:
            return "no_effect"
        if self.outcome == OK:
            return "ran"
        if self.outcome == FAIL or (self.outcome == INFO and self.error):
            return "failed"
        return "unknown"

    @property
    def counts(self) -> bool:
        """True when the fault may have broken something: not skipped, and not certainly failed."""
        return self.skipped is None and self.outcome != FAIL

    def saw(self, value: Any, at_stop: bool) -> None:
        """Take in what a nemesis op of this fault saw (its value's ``effect``); findings about the
        start that come with a stop count for the nodes the plan names."""
        effects = value.get("effect") if isinstance(value, dict) else None
        planned = self.plan.get("nodes") if isinstance(self.plan, dict) else None
        for node, seen in (effects.items() if isinstance(effects, dict) else ()):
            if not isinstance(seen, dict):
                continue
            reason = str(seen.get("reason") or "no reason given")
            if seen.get("effect_of") == "stop":
                if seen.get("took_effect") is False:
                    self.stop_no_effect.setdefault(node, reason)
            elif at_stop and isinstance(planned, list) and node not in planned:
                continue
            elif seen.get("took_effect") is False:
                self.no_effect[node] = reason
            elif seen.get("took_effect") is None:
                self.unverified.setdefault(node, reason)

    def active_until(self, end: int) -> int:
        """When it stopped possibly being in place: its ok stop's completion, else ``end`` (the history's)."""
        return self.stopped if self.stopped is not None else max(end, self.invoked)


@attrs.define
class NemesisLog:
    """The run's faults in start order, and what made the nemesis ops uninterpretable."""

    faults: list[RunFault] = attrs.Factory(list)
    malformed: list[str] = attrs.Factory(list)
    #: Faults of one kind active at once, as ``(kind, ids)`` (the schedule promises one per kind).
    same_kind_overlaps: list[tuple[str, list[Any]]] = attrs.Factory(list)
    #: ``(f, invoke_ns, completion_ns or None)`` of every stop: a heal that closed nothing still acted.
    stops: list[tuple[str, int, int | None]] = attrs.Factory(list)


def _ms(ns: int | float | None) -> float | None:
    return None if ns is None else round(ns / 1e6, 3)


def _planned_id(value: Any) -> Any:
    return value.get("id") if isinstance(value, dict) else None


def read_nemesis(history: Iterable[Op]) -> NemesisLog:
    """Every start of the run with its outcome and the stop that closed it (one pass over the history)."""
    log = NemesisLog()
    open_ops: dict[str, Op] = {}
    #: Per kind, the started faults no ok stop has closed yet, in start order.
    pending: dict[str, list[RunFault]] = defaultdict(list)
    starting: dict[str, RunFault] = {}
    for op in history:
        if op.get("process") != NEMESIS:
            continue
        f = str(op.get("f", ""))
        action, _, kind = f.partition("-")
        time = int(op.get("time", 0))
        if action not in ("start", "stop") or not kind:
            log.malformed.append(f"nemesis op {f!r} at {_ms(time)} ms is neither start-<fault> nor stop-<fault>")
            continue
        if op["type"] == INVOKE:
            if f in open_ops:
                log.malformed.append(f"{f} invoked at {_ms(time)} ms before its invoke at "
                                     f"{_ms(open_ops[f].get('time', 0))} ms completed")
            open_ops[f] = op
            if action == "start":
                fault = RunFault(kind=kind, plan=op.get("value"), invoked=time, planned_id=_planned_id(op.get("value")))
                live = [other for other in pending[kind] if other.counts]
                if live:
                    log.same_kind_overlaps.append((kind, [other.planned_id for other in live] + [fault.planned_id]))
                log.faults.append(fault)
                pending[kind].append(fault)
                starting[kind] = fault
            else:
                for fault in _closed_by(pending[kind], op.get("value")):
                    fault.stop_invoked = fault.stop_invoked if fault.stop_invoked is not None else time
            continue
        invoke = open_ops.pop(f, None)
        if invoke is None:
            log.malformed.append(f"{f} completed ({op['type']}) at {_ms(time)} ms without an invoke")
            continue
        if action == "start":
            fault = starting.pop(kind)
            fault.completed, fault.outcome = time, op["type"]
            fault.error = op.get("error")
            fault.skipped = op.get("skipped")
            fault.saw(op.get("value"), at_stop=False)
            continue
        log.stops.append((f, int(invoke.get("time", 0)), time))
        closed = _closed_by(pending[kind], invoke.get("value"))
        for fault in closed:
            fault.saw(op.get("value"), at_stop=True)
        if op["type"] != OK:  # the fault may still be in place: it stays active until a stop succeeds
            for fault in closed:
                fault.stop_errors.append(str(op.get("error") or op["type"]))
            continue
        for fault in closed:
            fault.stopped = time
            fault.stopped_by = "heal" if invoke.get("value") == "heal" else "schedule"
            pending[kind].remove(fault)
    # A start still open never completed: its outcome is unknown and it stays active; a stop still open
    # may still be acting.
    log.stops += [(f, int(invoke.get("time", 0)), None) for f, invoke in open_ops.items() if f.startswith("stop-")]
    return log


def _closed_by(pending: list[RunFault], stop_value: Any) -> list[RunFault]:
    """The open faults a stop with ``stop_value`` closes: the one with its plan id, else all of them."""
    wanted = _planned_id(stop_value)
    if wanted is not None:
        return [fault for fault in pending if fault.planned_id == wanted]
    return list(pending)


def nemesis_busy(log: NemesisLog, end: int) -> list[tuple[str, int, int]]:
    """What the quorum checker keeps out of quiet windows: every fault's active interval, and every
    stop from its invoke to its completion (``end`` when none), even a heal that had nothing to close."""
    stops = [(f, start, stop if stop is not None else max(end, start)) for f, start, stop in log.stops]
    return sorted(active_intervals(log.faults, end) + stops, key=lambda interval: (interval[1], interval[2]))


def active_intervals(faults: Iterable[RunFault], end: int) -> list[tuple[str, int, int]]:
    """``(kind, from_ns, to_ns)`` for every fault that may have broken something: from its start's
    invoke to the completion of the stop that closed it (``end`` when none did), by start time."""
    return sorted(((fault.kind, fault.invoked, fault.active_until(end)) for fault in faults if fault.counts),
                  key=lambda interval: (interval[1], interval[2]))


def max_overlap(intervals: list[tuple[str, int, int]]) -> tuple[int, int | None, list[str], int]:
    """The most intervals active at once, when that first happened, their kinds, and the total time
    (ns) during which two or more were active."""
    events = sorted([(start, 1, i) for i, (_, start, _) in enumerate(intervals)]
                    + [(stop, 0, i) for i, (_, _, stop) in enumerate(intervals)])  # ends first on ties
    active: set[int] = set()
    best, when, kinds, overlap_ns, since = 0, None, [], 0, None
    for time, is_start, index in events:
        if is_start:
            active.add(index)
        else:
            active.discard(index)
        if len(active) >= 2 and since is None:
            since = time
        elif len(active) < 2 and since is not None:
            overlap_ns += time - since
            since = None
        if len(active) > best:
            best, when, kinds = len(active), time, sorted(intervals[i][0] for i in active)
    return best, when, kinds, overlap_ns


def _schedule(test: dict[str, Any], malformed: list[str]) -> list[dict[str, Any]] | None:
    schedule = test.get("fault_schedule")
    if schedule is None:
        return None
    if not isinstance(schedule, list):
        malformed.append("test.json's fault_schedule is not a list")
        return []
    good = []
    for position, entry in enumerate(schedule):
        if (not isinstance(entry, dict) or not isinstance(entry.get("fault"), str)
                or not all(isinstance(entry.get(field), int | float) for field in ("start", "stop"))):
            malformed.append(f"fault_schedule[{position}] lacks fault, start or stop: {json.dumps(entry, default=str)}")
            continue
        good.append(entry)
    return good


def _match(schedule: list[dict[str, Any]], faults: list[RunFault]) -> dict[int, RunFault]:
    """Planned position -> the run's start of it: by plan ``id`` first, then each start left over takes
    the next unmatched planned fault of its kind (plans that are not objects carry no id)."""
    by_id = {entry["id"]: position for position, entry in enumerate(schedule) if entry.get("id") is not None}
    matched: dict[int, RunFault] = {}
    left: list[RunFault] = []
    for fault in faults:
        if fault.planned_id is None or not by_id:
            left.append(fault)
            continue
        position = by_id.get(fault.planned_id)
        if position is not None and position not in matched and schedule[position]["fault"] == fault.kind:
            matched[position] = fault  # else an id the schedule does not have: unplanned
    for fault in left:
        position = next((p for p, entry in enumerate(schedule) if entry["fault"] == fault.kind and p not in matched),
                        None)
        if position is not None:
            matched[position] = fault
    return matched


def _entry(fault: RunFault | None, planned: dict[str, Any] | None) -> dict[str, Any]:
    """One row of the report: what was planned and what happened, in ms."""
    row: dict[str, Any] = {}
    if planned is not None:
        row.update(id=planned.get("id"), fault=planned["fault"], planned_start_ms=_ms(planned["start"]),
                   planned_stop_ms=_ms(planned["stop"]))
    if fault is None:
        row["status"] = "never_started"
        return row
    row.setdefault("fault", fault.kind)
    if planned is None:
        row["id"] = fault.planned_id
    row.update(status=fault.status, start_ms=_ms(fault.invoked), started_ms=_ms(fault.completed),
               stop_ms=_ms(fault.stopped), stopped_by=fault.stopped_by)
    if fault.skipped is not None:
        row["reason"] = fault.skipped
    elif fault.error:
        row["error"] = fault.error
    if fault.stop_errors:
        row["stop_errors"] = fault.stop_errors[:5]
    for field in ("no_effect", "unverified", "stop_no_effect"):
        if getattr(fault, field):
            row[field] = getattr(fault, field)
    if planned is not None:
        row["start_delay_ms"] = _ms(fault.invoked - planned["start"])
        if fault.stopped is not None:
            row["stop_delay_ms"] = _ms(fault.stopped - planned["stop"])
    return row


def check(test: dict[str, Any], history: list[Op], run_dir: Path | None = None,
          index: HistoryIndex | None = None) -> dict[str, Any]:
    """Planned vs run, per fault and per kind, with the most faults active at once; False only when the
    nemesis ops or the schedule cannot be interpreted."""
    index = HistoryIndex(history) if index is None else index
    log = read_nemesis(index.ops_of(NEMESIS))
    end = int(index.end)
    schedule = _schedule(test, log.malformed)
    rows: list[dict[str, Any]] = []
    totals: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(("planned", *STATUSES, "unplanned"), 0))
    if schedule is not None:
        matched = _match(schedule, log.faults)
        for position, planned in enumerate(schedule):
            rows.append(_entry(matched.get(position), planned))
            totals[planned["fault"]]["planned"] += 1
        unplanned = [fault for fault in log.faults if fault not in matched.values()]
    else:
        unplanned = []
        rows = [_entry(fault, None) for fault in log.faults]
    for row in rows:
        totals[row["fault"]][row["status"]] += 1
    for fault in unplanned:
        rows.append({**_entry(fault, None), "unplanned": True})
        totals[fault.kind][fault.status] += 1
        totals[fault.kind]["unplanned"] += 1

    intervals = active_intervals(log.faults, end)
    most, most_at, most_kinds, overlap_ns = max_overlap(intervals)
    warnings = _warnings(test, schedule, rows, unplanned, log)
    delays = sorted(row["start_delay_ms"] for row in rows if row.get("start_delay_ms") is not None)
    counts = {f"{status}_count": sum(row["status"] == status for row in rows) for status in STATUSES}
    counts.update(unverified_count=sum(bool(row.get("unverified")) for row in rows),
                  stops_without_effect_count=sum(bool(row.get("stop_no_effect")) for row in rows))
    # Counts first: the web page's one-line summary shows the first few.
    result: dict[str, Any] = {
        "valid": not log.malformed, "warnings": warnings,
        "planned_count": len(schedule) if schedule is not None else None, "run_count": len(log.faults),
        **counts, "unplanned_count": len(unplanned), "max_active": most, "overlap_ms": _ms(overlap_ns),
        "max_active_at_ms": _ms(most_at), "max_active_kinds": most_kinds,
        "max_start_delay_ms": delays[-1] if delays else None,
        "median_start_delay_ms": delays[len(delays) // 2] if delays else None,
        "by_kind": {kind: totals[kind] for kind in sorted(totals)},
        "faults": rows[:SAMPLE],
    }
    if schedule is None:
        result["note"] = "test.json has no fault_schedule: the faults that ran only"
    if log.malformed:
        result["malformed"] = log.malformed[:50]
    membership = membership_summary(test, schedule, log.faults)
    if membership is not None:
        result["membership"] = membership
        warnings.extend(membership.pop("warnings"))
    return result


def _seen(row: dict[str, Any], field: str) -> str:
    """A row's per-node findings of one kind, as ``node: reason`` (the first two)."""
    return "; ".join(f"{node}: {why}" for node, why in list((row.get(field) or {}).items())[:2])


def _action(plan: Any) -> str:
    return str(plan.get("action")) if isinstance(plan, dict) else "unknown"


def membership_summary(test: dict[str, Any], schedule: list[dict[str, Any]] | None,
                       faults: list[RunFault]) -> dict[str, Any] | None:
    """Per membership action: planned, and the run's starts by status; each change that did not run,
    with why; the members at start and end. None when the run planned and ran no membership change."""
    planned = [entry for entry in schedule or () if entry["fault"] == "membership"]
    ran = [fault for fault in faults if fault.kind == "membership"]
    if not planned and not ran:
        return None
    actions: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(("planned", "ran", "skipped", "failed",
                                                                           "unknown"), 0))
    for entry in planned:
        actions[_action(entry.get("plan"))]["planned"] += 1
    not_run, warnings = [], []
    for fault in ran:
        action = _action(fault.plan)
        actions[action][fault.status] += 1
        if fault.status != "ran":
            plan = fault.plan if isinstance(fault.plan, dict) else {}
            what = " ".join(str(part) for part in (action, plan.get("dead") if action == "replace" else None,
                                                   "by" if action == "replace" else None, plan.get("node")) if part)
            why = fault.skipped or fault.error or "no outcome"
            not_run.append({"id": fault.planned_id, "change": what, "status": fault.status, "reason": why[:300]})
            warnings.append(f"membership change {what} (id {fault.planned_id}) {fault.status}: {why[:200]}")
    return {"actions": {action: actions[action] for action in sorted(actions)},
            "changes_run": sum(counts["ran"] for counts in actions.values()), "not_run": not_run[:SAMPLE],
            "members_at_start": test.get("nodes"), "members_at_end": test.get("final_nodes"),
            "warnings": warnings[:20]}


def _warnings(test: dict[str, Any], schedule: list[dict[str, Any]] | None, rows: list[dict[str, Any]],
              unplanned: list[RunFault], log: NemesisLog) -> list[str]:
    warnings = []
    if schedule:
        missed = [row for row in rows[:len(schedule)] if row["status"] not in ("ran", "no_effect")]
        if missed:
            how = defaultdict(int)
            for row in missed:
                how[row["status"].replace("_", " ")] += 1
            warnings.append(f"{len(missed)} of {len(schedule)} planned faults never ran ("
                            + ", ".join(f"{count} {status}" for status, count in sorted(how.items())) + ")")
        for kind in sorted({entry["fault"] for entry in schedule}):
            of_kind = [row for row in rows[:len(schedule)] if row["fault"] == kind]
            if of_kind and not any(row["status"] == "ran" for row in of_kind):
                reasons = sorted({row.get("reason") or row.get("error") or _seen(row, "no_effect") or row["status"]
                                  for row in of_kind})
                what = "took effect" if any(row["status"] == "no_effect" for row in of_kind) else "ran"
                warnings.append(f"no planned {kind} fault {what}, so the run did not test it: "
                                + "; ".join(reasons)[:300])
    for field, what in (("no_effect", "had no effect on some node, so the run did not test them there"),
                        ("stop_no_effect", "were stopped without effect on some node (in place until a later stop)"),
                        ("unverified", "could not be checked on some node")):
        seen = [row for row in rows if row.get(field)]
        if seen:
            shown = "; ".join(f"{row['fault']} (id {row.get('id')}) {_seen(row, field)}" for row in seen[:5])
            warnings.append(f"{len(seen)} faults {what}: {shown[:600]}")
    if unplanned:
        warnings.append(f"{len(unplanned)} faults ran that the schedule did not plan")
    for kind, ids in log.same_kind_overlaps:
        warnings.append(f"{len(ids)} {kind} faults were active at once (ids {ids}): the schedule promises one per kind")
    never_stopped = [fault for fault in log.faults if fault.counts and fault.stopped is None]
    if never_stopped:
        warnings.append(f"{len(never_stopped)} faults were never stopped, not even by the final heal: "
                        + ", ".join(f"{fault.kind} (id {fault.planned_id})" for fault in never_stopped[:10]))
    ran = {fault.kind for fault in log.faults if fault.status == "ran"}
    for kind in test.get("nemesis") or ():
        if kind not in ran and not (schedule and any(entry["fault"] == kind for entry in schedule)):
            warnings.append(f"the {kind} nemesis never ran a fault")
    return warnings
