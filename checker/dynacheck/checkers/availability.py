"""availability: Dynamo's first promise, "always writeable" (§4.6: sloppy quorum and hinted handoff).

A coordinator writes to the first N *healthy* nodes of the key's preference list, stand-ins for the
owners that are down, and answers after W of them acknowledged. So a write can be refused only when
its coordinator cannot reach W up nodes: itself and every other up member it exchanges packets
with count, owners or not. This checker finds the writes a sloppy quorum could have taken and says
how many of them the store refused anyway.

*Writes.* Every client ``add``, ``write``, ``remove`` and ``delete`` with a completion. ``add``,
``remove`` and ``delete`` are read-modify-writes (the cart's GET, then a PUT or DELETE with its
context): they need R replies and then W acknowledgements, so they are judged against max(R, W); a
blind ``write`` against W. A read-before-write that failed (error ``read before ...``) counts as
a refusal of the write, like a refused PUT: Dynamo's reads use the same sloppy quorum (the
coordinator's targets are the first N up nodes for a GET too), the client cannot write without the
context the read would have given, and the user's cart operation was refused either way. They are
counted apart as well (``read_before_write_count``). A refusal is any ``fail`` or ``info``
completion except a 4xx (the store judged the request bad, not unavailable: ``client_error``, not
counted here), and so is a remove whose read found nothing to remove (``empty``: it sent no
write, ``no_write``).

*When a write is judged* (conservatively: only when the store had no excuse for its whole duration):

* *settled*: no nemesis op ran during it, nor in the ``quiet_margin`` seconds before its invoke
  (``test.json``, default 3.0, as for the quorum checker's quiet windows: failure detectors,
  gossip and connection resets settle). Every start and stop counts from its invoke to its
  completion, skipped ones too, so the state below is constant over the write;
* its coordinator (the completion's ``node``: the node the client last sent it to) is a member and
  up: not in the plan's ``nodes`` of an active kill, pause, disk, power or corrupt fault (or any
  other kind that takes nodes; one without ``nodes`` takes them all), nor a node an active
  ``membership`` change acts on (``node``, ``dead``). A fault is active from its start's invoke to
  the completion of the ok stop that closed it (``faults.read_nemesis``). Members are ``test.json``'s
  ``nodes`` (the initial members; never its ``spare_nodes``), less a node that leaves, is removed or
  is replaced (``dead``) from that change's start, plus a node that joins or replaces from the end
  of that change (its stop, which waits for the transfers to settle) when its start was ok (one
  of unknown outcome brings no node in);
* the coordinator can reach at least the needed number of up members, itself included, directly:
  under the partition rules possibly in force, neither drops the other's packets (``quorum.neighbours``).
  Those are the union of the grudges of every active partition fault, a superset of
  ``quorum.partition_intervals``' rules in force (which end at the next stop's invoke): a stop that
  failed may have left its rules behind. Clock and netem faults take no node (a sloppy quorum is
  expected to write through a skewed clock or a slow link);
* no netem fault active could make a correct store miss its deadline: one that loses packets
  (``loss_percent`` above 0), or whose slowest round trip between nodes, twice ``delay_ms`` plus
  ``jitter_ms``, does not fit twice, with time to spare, in the nodes' ``request_timeout`` (``test.json``; a forwarded
  PUT waits on two round trips). A lost segment waits for TCP to resend it, after a retransmission
  timeout of at least 200 ms that doubles with each loss, and holds every message behind it on the
  connection; how often that outlasts a deadline depends on the kernel and the traffic, not on the
  store (under ``dynacheck sim``, 200 ms delay with 10 % loss against the tests' 1 s deadline
  refused 2-4 % of the writes of a correct daemon). Writes under a lossless, fast-enough netem
  are judged: a store that fails writes over a slow but working link is still caught.

A refused write outside those conditions is not counted: a coordinator in a minority, a killed or
paused coordinator, a link that netem made too lossy or slow for the deadline (``slow_link``), or
a write while a fault was starting or stopping (``refused_not_counted``
gives each reason's count; ``unsettled`` there is where a slow failure detection would show, and
``unsettled_refusals_after`` names the nemesis op each such refusal followed, e.g. ``start-kill``).

*Verdict.* Per fault kind active while a write ran (``none`` when none was) and over all judged
writes: writes judged, writes refused, the fraction, examples. Invalid when, over all writes or in
one kind, at least ``MIN_REFUSED`` (2) writes and more than ``MAX_REFUSED_SHARE`` (1 %) of them were
refused; else valid (``exercised: false`` when fewer than ``MIN_JUDGED`` (100) writes were judged, as
the quorum checker says when nothing was tested: a short run can still fail it). Why 1 %: the
promise is "always", so a correct store refuses none of these writes in principle, but an ``info``
includes a client timeout, which a loaded test host (two cores shared by every node and the
checker) can cause with no fault at all; the failures this checker exists for are not rare:
a coordinator that fails a PUT when one target drops instead of falling over, a failure detector
that never suspects a dead peer, or a strict quorum under a down owner each refuse a large share
of the writes to the affected keys (with N = 3 of 5 nodes and W = 3, one dead node blocks 60 %).
Why two: one unlucky timeout alone must not fail a run, however few writes were judged.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections import defaultdict
from pathlib import Path
from typing import Any

import attrs

from dynacheck.checkers.faults import NemesisLog, RunFault, read_nemesis
from dynacheck.checkers.quorum import DEFAULT_QUIET_MARGIN_S, Locator, neighbours, quiet_windows
from dynacheck.history import NEMESIS, OK, HistoryIndex, Op, gc_paused, is_client

WRITES = ("add", "write", "remove", "delete")
#: Writes sent without reading first (the others need R replies, then W acknowledgements).
BLIND = frozenset({"write"})
#: Fault kinds that take no node down (partitions cut links instead: see the grudge).
NO_NODES = frozenset({"partition", "clock", "netem"})
MEMBERSHIP = "membership"
#: More than this share of the judged writes refused (over all, or in one kind) is invalid.
MAX_REFUSED_SHARE = 0.01
#: Fewer refusals than this never fail a run (one client timeout on a loaded host is not a defect).
MIN_REFUSED = 2
#: Fewer judged writes than this: the run is reported ``exercised: false`` (it may still fail).
MIN_JUDGED = 100
SAMPLE = 20
#: The nodes' quorum deadline when ``test.json`` does not say (runs before it was recorded: every
#: dynacheck run has set it to this, ``dynacheck.db.TEST_NODE_CONFIG``).
DEFAULT_REQUEST_TIMEOUT_S = 1.0
NO_FAULT = "none"
#: A remove whose read found an empty cart writes nothing (the client marks it ``empty``).
NO_WRITE = "nothing to remove"
_CLIENT_ERROR = re.compile(r"\bHTTP 4\d\d\b|^unknown op ")


def _ms(ns: int) -> float:
    return round(ns / 1e6, 3)


@attrs.frozen
class State:
    """The cluster as the nemesis ops describe it at one time: members, those down, the partition
    rules possibly in force, and the kinds of the faults active."""

    members: frozenset[str]
    down: frozenset[str]
    grudge: dict[str, list[str]]
    kinds: tuple[str, ...]
    #: A netem fault is active whose plan can make a correct store miss its deadline.
    slow_link: bool = False

    def reach(self, node: str) -> set[str]:
        """The up members ``node`` exchanges packets with directly, itself included."""
        return {node} | neighbours(self.grudge, node, set(self.members - self.down))


def _plan(fault: RunFault) -> dict[str, Any]:
    """A start's plan (its invoke value); a ``{"plan": ...}`` wrapper is unwrapped."""
    plan = fault.plan
    if isinstance(plan, dict) and isinstance(plan.get("plan"), dict):
        plan = plan["plan"]
    return plan if isinstance(plan, dict) else {}


def outlasts_deadline(plan: dict[str, Any], request_timeout_s: float) -> bool:
    """Whether a netem plan can make a correct store miss its deadline: it loses packets, or two
    of its slowest round trips (a forwarded PUT's) do not fit in ``request_timeout_s``. A plan
    that does not say is taken for the worst."""
    try:
        loss = float(plan.get("loss_percent", 100))
        round_trip_s = 2 * (float(plan.get("delay_ms", 1e9)) + float(plan.get("jitter_ms", 0))) / 1000
    except (TypeError, ValueError):
        return True
    return loss > 0 or 2 * round_trip_s >= request_timeout_s


def _membership_change(fault: RunFault) -> tuple[set[str], set[str], set[str]]:
    """A membership change's ``(nodes it acts on, nodes that leave, nodes that join)``; an ``action``
    of ``none`` (nothing was feasible) acts on none."""
    plan = _plan(fault)
    action, node, dead = plan.get("action"), plan.get("node"), plan.get("dead")
    listed = plan.get("nodes") if isinstance(plan.get("nodes"), list) else []
    touched = {name for name in (node, dead, *listed) if isinstance(name, str)}
    leaving = {node} if action in ("leave", "remove") and isinstance(node, str) else set()
    joining = {node} if action in ("join", "replace") and isinstance(node, str) else set()
    if action == "replace" and isinstance(dead, str):
        leaving.add(dead)
    return touched, leaving, joining


_JOINS, _LEAVES = 0, 1


class Schedule:
    """What the nemesis ops say about every time of the run (pure: built from the history alone)."""

    def __init__(self, members: list[str], log: NemesisLog, end: int,
                 request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S):
        self.initial = frozenset(members)
        self.request_timeout_s = request_timeout_s
        #: ``(fault, from_ns, to_ns)`` of every fault that may have broken something.
        self.active = [(fault, fault.invoked, fault.active_until(end)) for fault in log.faults if fault.counts]
        #: ``(time, order, node)`` in time order: a leaving node is out from its change's start, a
        #: joining one in from its end (both the conservative side: fewer nodes to count). At one
        #: time a join comes first: changes run one after another, so a change that ends at the
        #: time another starts ended before it (``dynacheck sim`` runs them at the same
        #: simulated instant: a node that joined and then left was taken for a member ever after).
        changes: list[tuple[int, int, str]] = []
        for fault, start, stop in self.active:
            if fault.kind == MEMBERSHIP:
                _, leaving, joining = _membership_change(fault)
                if fault.outcome != OK:
                    # A change of unknown outcome (its start ended ``info``): a node it would
                    # have taken out may be out, one it would have brought in is not counted
                    # (seed 10285: a join whose start found no member answering made the
                    # checker count the spare as a member reachable by every coordinator).
                    joining = set()
                changes += [(start, _LEAVES, node) for node in leaving] + [(stop, _JOINS, node) for node in joining]
        self.changes = sorted(changes)
        self.change_times = [time for time, _, _ in self.changes]

    def members_at(self, time: int) -> frozenset[str]:
        """The members at ``time``: the initial ones as changed by every change before it."""
        members = set(self.initial)
        for _, order, node in self.changes[:bisect_right(self.change_times, time)]:
            (members.add if order == _JOINS else members.discard)(node)
        return frozenset(members)

    def at(self, time: int) -> State:
        """The state at ``time``."""
        members = self.members_at(time)
        down: set[str] = set()
        grudge: dict[str, set[str]] = defaultdict(set)
        kinds: set[str] = set()
        slow_link = False
        for fault, start, stop in self.active:
            if not start <= time < stop:
                continue
            kinds.add(fault.kind)
            plan = _plan(fault)
            if fault.kind == "netem":
                slow_link = slow_link or outlasts_deadline(plan, self.request_timeout_s)
            elif fault.kind == "partition":
                for node, dropped in (plan.get("grudge") or {}).items():
                    grudge[node].update(dropped)
            elif fault.kind == MEMBERSHIP:
                touched = _membership_change(fault)[0]
                # A change that names no node (and is not a no-op): any of them may be in flux.
                down |= touched or (frozenset() if plan.get("action") == "none" else members)
            elif fault.kind not in NO_NODES:
                nodes = plan.get("nodes")
                down |= set(nodes) if isinstance(nodes, list) else members  # which nodes is unknown: all
        return State(members=members, down=frozenset(down), grudge={node: sorted(d) for node, d in grudge.items()},
                     kinds=tuple(sorted(kinds)), slow_link=slow_link)


def settled_windows(log: NemesisLog, end: int, margin_ns: int) -> list[tuple[int, int]]:
    """``(from_ns, to_ns)`` of the times no nemesis op was running nor had completed in the
    ``margin_ns`` before: every start (skipped ones too) and stop from its invoke to its completion."""
    running = [(f"start-{fault.kind}", fault.invoked, fault.completed if fault.completed is not None else end)
               for fault in log.faults]
    running += [(f, start, stop if stop is not None else end) for f, start, stop in log.stops]
    return quiet_windows(running, end, margin_ns)


@attrs.define
class _Group:
    """Judged and refused writes of one fault kind (or of all)."""

    judged: int = 0
    refused: int = 0
    read_before_write: int = 0
    examples: list[dict[str, Any]] = attrs.Factory(list)

    def fraction(self) -> float | None:
        return round(self.refused / self.judged, 4) if self.judged else None

    def fails(self) -> bool:
        return self.refused >= MIN_REFUSED and self.refused > MAX_REFUSED_SHARE * self.judged

    def report(self) -> dict[str, Any]:
        return {"judged": self.judged, "refused": self.refused, "fraction": self.fraction(),
                "read_before_write": self.read_before_write, "exercised": self.judged >= MIN_JUDGED,
                "examples": self.examples}


def _request_timeout(test: dict[str, Any]) -> float:
    value = test.get("request_timeout")
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return float(value)
    return DEFAULT_REQUEST_TIMEOUT_S


def _needed(f: str, r: int, w: int) -> int:
    return w if f in BLIND else max(r, w)


def _example(invoke: Op, completion: Op, node: str, reach: set[str], needed: int, kinds: tuple[str, ...]
             ) -> dict[str, Any]:
    error = str(completion.get("error") or "")
    return {"index": completion.get("index"), "f": completion.get("f", invoke.get("f")), "key": invoke.get("key"),
            "element": invoke.get("value"), "node": node, "type": completion["type"], "error": error[:300],
            "stage": "read" if error.startswith("read before") else "write", "faults": list(kinds),
            "reachable": sorted(reach), "needed": needed,
            "invoke_ms": _ms(invoke["time"]), "done_ms": _ms(completion["time"])}


def _excuse(invoke: Op, completion: Op, node: str, needed: int, schedule: Schedule, locate: Locator
            ) -> tuple[str | None, State | None, set[str]]:
    """Why a write is not judged (None: it is), the state it ran in and what its coordinator reached."""
    error = str(completion.get("error") or "")
    if completion["type"] != OK and (completion.get("empty") or error.startswith(NO_WRITE)):
        return "no_write", None, set()
    if completion["type"] != OK and _CLIENT_ERROR.search(error):
        return "client_error", None, set()
    if locate.span(invoke["time"], completion["time"]) is None:
        return "unsettled", None, set()
    state = schedule.at(invoke["time"])
    if node not in state.members:
        return "not_member", state, set()
    if node in state.down:
        return "coordinator_down", state, set()
    if state.slow_link:
        return "slow_link", state, set()
    reach = state.reach(node)
    return ("minority" if len(reach) < needed else None), state, reach


def check(test: dict[str, Any], history: list[Op], run_dir: Path | None = None,
          index: HistoryIndex | None = None) -> dict[str, Any]:
    """Writes a sloppy quorum could have taken, and the share of them refused: False above
    ``MAX_REFUSED_SHARE`` and at least ``MIN_REFUSED``."""
    r, w = test.get("r"), test.get("w")
    if not isinstance(r, int) or not isinstance(w, int):
        return {"valid": "unknown", "reason": "test.json does not give r and w"}
    margin_s = float(test.get("quiet_margin", DEFAULT_QUIET_MARGIN_S))
    index = HistoryIndex(history) if index is None else index
    with gc_paused():
        end = index.end
        log = read_nemesis(index.ops_of(NEMESIS))
        members = test.get("nodes")
        if not isinstance(members, list) or not members:
            # Older or hand-made tests: the nodes the clients sent ops to.
            members = sorted({op["node"] for op in history if is_client(op) and isinstance(op.get("node"), str)})
        members = [node for node in members if node not in (test.get("spare_nodes") or ())]  # spares join later
        schedule = Schedule(members, log, end, _request_timeout(test))
        locate = Locator(settled_windows(log, end, int(margin_s * 1e9)))
        overall, by_kind = _Group(), defaultdict(_Group)
        not_judged: dict[str, int] = defaultdict(int)
        not_counted: dict[str, int] = defaultdict(int)
        refused_total = 0
        #: The nemesis ops by invoke time: which one an unsettled refusal came after.
        nemesis_ops = sorted([(fault.invoked, f"start-{fault.kind}") for fault in log.faults]
                             + [(start, f) for f, start, _ in log.stops])
        nemesis_times = [time for time, _ in nemesis_ops]
        unsettled_after: dict[str, int] = defaultdict(int)
        for invoke, completion in index.client_pairs:
            f = invoke.get("f")
            if f not in WRITES:
                continue
            if completion is None:
                not_judged["no_completion"] += 1
                continue
            refused = completion["type"] != OK
            node = completion.get("node", invoke.get("node"))
            needed = _needed(f, r, w)
            reason, state, reach = _excuse(invoke, completion, node, needed, schedule, locate)
            refused_total += refused and reason != "no_write"
            if reason is not None:
                not_judged[reason] += 1
                not_counted[reason] += refused
                if reason == "unsettled" and refused:
                    last = bisect_right(nemesis_times, completion["time"]) - 1
                    unsettled_after[nemesis_ops[last][1] if last >= 0 else "start"] += 1
                continue
            assert state is not None
            stage_read = refused and str(completion.get("error") or "").startswith("read before")
            for group in (overall, *(by_kind[kind] for kind in state.kinds or (NO_FAULT,))):
                group.judged += 1
                group.refused += refused
                group.read_before_write += stage_read
                if refused and len(group.examples) < SAMPLE:
                    group.examples.append(_example(invoke, completion, node, reach, needed, state.kinds))
    failing = sorted(kind for kind, group in by_kind.items() if group.fails())
    if overall.fails() or failing:
        valid: bool | str = False
    else:
        valid = True
    # Counts first: the web page's one-line summary shows the first few.
    result: dict[str, Any] = {
        "valid": valid, "judged_count": overall.judged, "refused_count": overall.refused,
        "refused_fraction": overall.fraction(), "max_refused_share": MAX_REFUSED_SHARE, "min_judged": MIN_JUDGED,
        "read_before_write_count": overall.read_before_write,
        "refused_by_fault": {kind: by_kind[kind].refused for kind in sorted(by_kind)},
        "judged_by_fault": {kind: by_kind[kind].judged for kind in sorted(by_kind)},
        "refused_in_history_count": refused_total,
        "refused_not_counted": {reason: not_counted[reason] for reason in sorted(not_judged)},
        "not_judged": dict(sorted(not_judged.items())),
        "unsettled_refusals_after": dict(sorted(unsettled_after.items())),
        "r": r, "w": w, "quiet_margin_s": margin_s, "request_timeout_s": schedule.request_timeout_s,
        "members": sorted(schedule.initial),
        "by_fault": {kind: by_kind[kind].report() for kind in sorted(by_kind)},
        "examples": overall.examples,
    }
    if valid is False:
        groups = (["all writes"] if overall.fails() else []) + failing
        result["reason"] = (f"more than {MAX_REFUSED_SHARE:.0%} of the writes a sloppy quorum could have taken "
                            f"were refused ({', '.join(groups)})")
    elif overall.judged < MIN_JUDGED:
        result["exercised"] = False
        result["reason"] = f"only {overall.judged} writes were judgeable (fewer than {MIN_JUDGED})"
    return result
