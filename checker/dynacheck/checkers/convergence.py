"""convergence: did the replicas agree once the faults healed? (Dynamo §4.7: anti-entropy and hinted
handoff make replicas eventually consistent; Jepsen's "eventual" checks.)

After the final heal the runner polls ``/admin/replica/{key}`` on every node, in rounds, until every key
has converged or it gives up. A key has converged in a round when every node answered, every node
holding a copy holds the same sibling set (same dots, same tombstone flags) and at least
``min(N, nodes)`` nodes hold it — or no node holds anything. ``round_verdict`` is that rule, pure, so
the runner can use it live to decide when to stop polling.

On the final ring. The members at the end (``final_nodes`` in test.json; ``nodes`` when absent) are
the nodes polled, and the runner snapshots ``/admin/ring`` (``final_ring``: ``partitions``, ``n``,
``preference_lists``) once polling ends. With it, the key's replicas are its final preference list:
it has converged when every one of them holds the same non-empty sibling set and any other node
holding a copy holds that set too (or no node holds anything). Copies held by nodes outside the
preference list at the last poll are reported (``extra_copies``), not judged: a stand-in drops its
copy only after handing it off.

Rounds may poll every key or only those still diverged: a key's state is the one of the last round
that polled it, and it counts as converged from the first round after which its polls never diverged
again.

Which mechanism had to work (reported, never part of the verdict). The runner polls before the final
reads, so between the heal and the last poll no client op touches a key: a key diverged at its first
poll and converged at its last was repaired by the store alone, by anti-entropy (§4.7) or hinted
handoff (§4.6). Keys are counted as ``already_converged`` (first poll converged, never diverged after),
``repaired`` (first poll diverged, last converged), ``rediverged`` (converged first, diverged later,
converged at the end) or ``still_diverged``, split into hot and cold keys (cold: the name holds
``-cold-``; written a few times and never read before the end, so nothing but those mechanisms brings
their replicas together). The runner's ``f: "status"`` snapshots of each node, ``phase`` ``before``
(right after the final heal) and ``after`` (once the polls ended), give per node and in total the
deltas of ``anti_entropy.keys_received``, ``keys_sent``, ``exchanges`` and ``handoffs``, and
``hinted_keys`` before and after; ``repaired_by`` sums it up (with ``repair_counters``, the totals):
``none needed`` when no key had to be
repaired, else the mechanisms whose counters moved (``anti-entropy``: keys received or sent;
``hinted handoff``: handoffs, or fewer hinted keys after than before), ``anti-entropy and/or hinted
handoff`` when both did (the counters are per node, not per key), ``unexplained`` when neither did and
``unknown`` without a node snapshotted before and after.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from dynacheck.history import CONVERGENCE, INVOKE, NEMESIS, OK, HistoryIndex, Op, gc_paused
from dynamod.core.ring import partition_of

SAMPLE = 50
FATES = ("already_converged", "repaired", "rediverged", "still_diverged")
COLD = "-cold-"
#: Status counters whose change from ``before`` to ``after`` is reported, and where they are.
COUNTERS = {"keys_received": ("anti_entropy", "keys_received"), "keys_sent": ("anti_entropy", "keys_sent"),
            "exchanges": ("anti_entropy", "exchanges"), "handoffs": ("handoffs",)}


def _sibling_set(value: Any) -> frozenset[tuple[tuple[Any, ...], bool]]:
    return frozenset((tuple(s.get("dot") or ()), bool(s.get("deleted"))) for s in value or ())


def _answers(round_ops: Iterable[Op]) -> tuple[dict[str, set[str]], dict[str, dict[str, Any]]]:
    """Per key: the nodes asked, and each node's answer (its ok value, or None when it did not answer ok)."""
    asked: dict[str, set[str]] = defaultdict(set)
    answers: dict[str, dict[str, Any]] = defaultdict(dict)
    for op in round_ops:
        key, node = op.get("key"), op.get("node")
        if key is None or node is None:
            continue
        asked[key].add(node)
        if op["type"] == OK:
            answers[key][node] = op.get("value") or []
        elif op["type"] != INVOKE:
            answers[key].setdefault(node, None)
    return asked, answers


#: Key -> the nodes that replicate it (its preference list on the final ring).
Owners = Callable[[str], Sequence[str]]


def ring_owners(ring: dict[str, Any] | None) -> Owners | None:
    """The preference list of a key on ``ring`` (an ``/admin/ring`` document), or None without one."""
    if not isinstance(ring, dict) or not ring.get("preference_lists") or not ring.get("partitions"):
        return None
    lists = [list(preference) for preference in ring["preference_lists"]]
    partitions = int(ring["partitions"])

    def owners(key: str) -> Sequence[str]:
        return lists[partition_of(key.encode(), partitions)]
    return owners


def _converged(asked: set[str], answers: dict[str, Any], replicas_needed: int,
               nodes: Iterable[str] | None, owners: Sequence[str] | None = None) -> bool:
    expected = asked | set(nodes or ()) | set(owners or ())
    if any(answers.get(node) is None for node in expected):
        return False  # a node that did not answer may hold anything
    held = [_sibling_set(value) for value in answers.values() if value]
    if not held:
        return True  # nothing stored anywhere
    if owners:
        return len(set(held)) == 1 and all(answers.get(node) for node in owners)
    return len(set(held)) == 1 and len(held) >= replicas_needed


def round_verdict(round_ops: Iterable[Op], replicas_needed: int,
                  nodes: Iterable[str] | None = None, owners: Owners | None = None) -> dict[str, bool]:
    """Key -> converged, for the polls (invokes and completions) of one round. With ``nodes``, every one
    of them must have answered for the key, not only those asked; with ``owners``, the key's replicas
    on the final ring must all hold it."""
    node_list = list(nodes) if nodes is not None else None
    asked, answers = _answers(round_ops)
    return {key: _converged(asked[key], answers[key], replicas_needed, node_list, owners(key) if owners else None)
            for key in asked}


def extra_copies(round_ops: Iterable[Op], owners: Owners) -> dict[str, list[str]]:
    """Key -> the nodes outside its preference list that held a copy in this round."""
    _, answers = _answers(round_ops)
    extra = {key: sorted(node for node, value in held.items() if value and node not in owners(key))
             for key, held in answers.items()}
    return {key: nodes for key, nodes in extra.items() if nodes}


def diverged_detail(round_ops: Iterable[Op], key: str) -> dict[str, Any]:
    """What each node answered for ``key`` in one round: its sibling dots (``"actor/counter"``, with
    ``" (deleted)"`` for tombstones), or ``"no answer"``."""
    asked, answers = _answers(op for op in round_ops if op.get("key") == key)
    detail: dict[str, Any] = {}
    for node in sorted(asked[key]):
        value = answers[key].get(node)
        if value is None:
            detail[node] = "no answer"
        else:
            detail[node] = sorted(f"{s['dot'][0]}/{s['dot'][1]}" + (" (deleted)" if s.get("deleted") else "")
                                  for s in value)
    return detail


def key_fates(states: dict[str, list[tuple[int, bool]]]) -> dict[str, dict[str, int]]:
    """How many keys were already converged at their first poll, repaired, rediverged or still
    diverged, each split into hot and cold keys (see the module doc)."""
    fates = {fate: {"hot": 0, "cold": 0} for fate in FATES}
    for key, seen in states.items():
        if not seen[-1][1]:
            fate = "still_diverged"
        elif not seen[0][1]:
            fate = "repaired"
        else:
            fate = "already_converged" if all(converged for _, converged in seen) else "rediverged"
        fates[fate]["cold" if COLD in key else "hot"] += 1
    return fates


def _counter(value: Any, *path: str) -> int | None:
    for name in path:
        value = value.get(name) if isinstance(value, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def status_deltas(statuses: list[Op]) -> dict[str, dict[str, Any]]:
    """Node -> the counters of its ``before`` and ``after`` status snapshots and their differences
    (None where a snapshot or counter is missing). Completions are paired with their invoke by node
    and phase."""
    open_ops: dict[tuple[Any, Any], Op] = {}
    snapshots: dict[Any, dict[str, Any]] = defaultdict(dict)
    for op in statuses:
        slot = (op.get("node"), op.get("phase"))
        if op["type"] == INVOKE:
            open_ops[slot] = op
        elif open_ops.pop(slot, None) is not None and op["type"] == OK and isinstance(op.get("value"), dict):
            snapshots[slot[0]][str(slot[1])] = op["value"]
    nodes = sorted({op.get("node") for op in statuses}, key=str)
    deltas: dict[str, dict[str, Any]] = {}
    for node in nodes:
        before, after = snapshots[node].get("before"), snapshots[node].get("after")
        entry: dict[str, Any] = {"snapshots": sorted(snapshots[node])}
        for name, path in COUNTERS.items():
            old, new = _counter(before, *path), _counter(after, *path)
            entry[name] = new - old if old is not None and new is not None else None
        entry["hinted_keys_before"] = _counter(before, "hinted_keys")
        entry["hinted_keys_after"] = _counter(after, "hinted_keys")
        deltas[str(node)] = entry
    return deltas


def mechanisms(states: dict[str, list[tuple[int, bool]]], statuses: list[Op]) -> dict[str, Any]:
    """The report's ``repaired_by`` (the mechanism), ``repair_counters`` (its evidence, summed over the
    nodes snapshotted before and after), ``key_fates`` and ``status`` (per node and ``total``)."""
    fates = key_fates(states)
    per_node = status_deltas(statuses)
    complete = [entry for entry in per_node.values() if set(entry["snapshots"]) >= {"before", "after"}]
    total: dict[str, Any] = {"nodes": len(per_node), "nodes_with_both_snapshots": len(complete)}
    for name in (*COUNTERS, "hinted_keys_before", "hinted_keys_after"):
        values = [entry[name] for entry in complete if entry[name] is not None]
        total[name] = sum(values) if values else None
    repaired = sum(fates["repaired"].values()) + sum(fates["rediverged"].values())
    anti_entropy = (total["keys_received"] or 0) + (total["keys_sent"] or 0) > 0
    handoff = (total["handoffs"] or 0) > 0 or (total["hinted_keys_before"] or 0) > (total["hinted_keys_after"] or 0)
    if not repaired:
        mechanism = "none needed"
    elif not complete:
        mechanism = "unknown: no node was snapshotted before and after the polls"
    elif anti_entropy and handoff:
        mechanism = "anti-entropy and/or hinted handoff"
    elif anti_entropy or handoff:
        mechanism = "anti-entropy" if anti_entropy else "hinted handoff"
    else:
        mechanism = "unexplained: no anti-entropy transfer and no handoff counted"
    counters = {"keys_repaired": repaired, **{name: total[name] for name in (
        "keys_received", "keys_sent", "exchanges", "handoffs", "hinted_keys_before", "hinted_keys_after")}}
    return {"repaired_by": mechanism, "repair_counters": counters, "key_fates": fates,
            "status": {**per_node, "total": total} if per_node else {}}


def _ms(ns: int) -> float:
    return round(ns / 1e6, 3)


def check(test: dict[str, Any], history: list[Op], run_dir: Path | None = None,
          index: HistoryIndex | None = None) -> dict[str, Any]:
    """Verdict on the convergence polls: True when every key converged, False when some key was still
    diverged at its last poll, unknown without polls."""
    index = HistoryIndex(history) if index is None else index
    rounds: dict[int, list[Op]] = defaultdict(list)
    statuses: list[Op] = []
    last_heal: int | None = None
    with gc_paused():
        for op in index.ops_of(CONVERGENCE):
            if op.get("f", "replica") == "replica":
                rounds[int(op.get("round", 0))].append(op)
            elif op.get("f") == "status":
                statuses.append(op)
        for op in index.ops_of(NEMESIS):
            if op["type"] != INVOKE:
                last_heal = op["time"]
    if not rounds:
        return {"valid": "unknown", "error": "no convergence polls in the history"}
    nodes = (test.get("final_nodes") or test.get("nodes")
             or sorted({op["node"] for ops in rounds.values() for op in ops if op.get("node")}))
    replicas_needed = min(int(test.get("n") or 3), len(nodes))
    owners = ring_owners(test.get("final_ring"))

    # Per key: (round, converged) in round order; a key's streak starts at its last diverged round.
    states: dict[str, list[tuple[int, bool]]] = defaultdict(list)
    summary = []
    for number in sorted(rounds):
        verdict = round_verdict(rounds[number], replicas_needed, nodes, owners)
        for key, converged in verdict.items():
            states[key].append((number, converged))
        summary.append({"round": number, "keys": len(verdict), "converged": sum(verdict.values()),
                        "start_ms": _ms(min(op["time"] for op in rounds[number])),
                        "end_ms": _ms(max(op["time"] for op in rounds[number]))})

    diverged = sorted(key for key, seen in states.items() if not seen[-1][1])
    result: dict[str, Any] = {"rounds": len(rounds), "keys": len(states), "replicas_needed": replicas_needed,
                              "round_summary": summary[:SAMPLE] + summary[-1:] * (len(summary) > SAMPLE)}
    if owners is not None:
        result["replicas_from"] = "final ring's preference lists"
        last_polls = [op for key, seen in states.items() for op in rounds[seen[-1][0]] if op.get("key") == key]
        extra = extra_copies(last_polls, owners)
        result.update(extra_copies_count=len(extra), extra_copies=dict(sorted(extra.items())[:SAMPLE]))
    if test.get("final_nodes") and test.get("final_nodes") != test.get("nodes"):
        result["final_nodes"] = list(test["final_nodes"])
    result.update(mechanisms(states, statuses))
    if diverged:
        result.update(valid=False, diverged_count=len(diverged), diverged=[
            {"key": key, "round": states[key][-1][0],
             "nodes": diverged_detail(rounds[states[key][-1][0]], key)} for key in diverged[:SAMPLE]])
        return result

    def settled_round(seen: list[tuple[int, bool]]) -> int:
        first = len(seen) - 1
        while first > 0 and seen[first - 1][1]:
            first -= 1
        return seen[first][0]

    converged_round = max(settled_round(seen) for seen in states.values())
    start = last_heal if last_heal is not None else min(op["time"] for op in rounds[min(rounds)])
    end = max(op["time"] for op in rounds[converged_round])
    result.update(valid=True, converged_round=converged_round, time_to_converge_ms=_ms(max(0, end - start)),
                  measured_from="final heal" if last_heal is not None else "first poll")
    return result
