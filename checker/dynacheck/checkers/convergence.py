"""convergence: did the replicas agree once the faults healed? (Dynamo §4.7: anti-entropy and hinted
handoff make replicas eventually consistent; Jepsen's "eventual" checks.)

After the final heal the runner polls ``/admin/replica/{key}`` on every node, in rounds, until every key
has converged or it gives up. A key has converged in a round when every node answered, every node
holding a copy holds the same sibling set (same dots, same tombstone flags) and at least
``min(N, nodes)`` nodes hold it — or no node holds anything. ``round_verdict`` is that rule, pure, so
the runner can use it live to decide when to stop polling.

Rounds may poll every key or only those still diverged: a key's state is the one of the last round
that polled it, and it counts as converged from the first round after which its polls never diverged
again.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from dynacheck.history import CONVERGENCE, INVOKE, NEMESIS, OK, Op, gc_paused

SAMPLE = 50


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


def _converged(asked: set[str], answers: dict[str, Any], replicas_needed: int,
               nodes: Iterable[str] | None) -> bool:
    expected = asked | set(nodes or ())
    if any(answers.get(node) is None for node in expected):
        return False  # a node that did not answer may hold anything
    held = [_sibling_set(value) for value in answers.values() if value]
    if not held:
        return True  # nothing stored anywhere
    return len(set(held)) == 1 and len(held) >= replicas_needed


def round_verdict(round_ops: Iterable[Op], replicas_needed: int,
                  nodes: Iterable[str] | None = None) -> dict[str, bool]:
    """Key -> converged, for the polls (invokes and completions) of one round. With ``nodes``, every one
    of them must have answered for the key, not only those asked."""
    node_list = list(nodes) if nodes is not None else None
    asked, answers = _answers(round_ops)
    return {key: _converged(asked[key], answers[key], replicas_needed, node_list) for key in asked}


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


def _ms(ns: int) -> float:
    return round(ns / 1e6, 3)


def check(test: dict[str, Any], history: list[Op], run_dir: Path | None = None) -> dict[str, Any]:
    """Verdict on the convergence polls: True when every key converged, False when some key was still
    diverged at its last poll, unknown without polls."""
    rounds: dict[int, list[Op]] = defaultdict(list)
    last_heal: int | None = None
    with gc_paused():
        for op in history:
            process = op.get("process")
            if process == CONVERGENCE and op.get("f", "replica") == "replica":
                rounds[int(op.get("round", 0))].append(op)
            elif process == NEMESIS and op["type"] != INVOKE:
                last_heal = op["time"]
    if not rounds:
        return {"valid": "unknown", "error": "no convergence polls in the history"}
    nodes = test.get("nodes") or sorted({op["node"] for ops in rounds.values() for op in ops if op.get("node")})
    replicas_needed = min(int(test.get("n") or 3), len(nodes))

    # Per key: (round, converged) in round order; a key's streak starts at its last diverged round.
    states: dict[str, list[tuple[int, bool]]] = defaultdict(list)
    summary = []
    for number in sorted(rounds):
        verdict = round_verdict(rounds[number], replicas_needed, nodes)
        for key, converged in verdict.items():
            states[key].append((number, converged))
        summary.append({"round": number, "keys": len(verdict), "converged": sum(verdict.values()),
                        "start_ms": _ms(min(op["time"] for op in rounds[number])),
                        "end_ms": _ms(max(op["time"] for op in rounds[number]))})

    diverged = sorted(key for key, seen in states.items() if not seen[-1][1])
    result: dict[str, Any] = {"rounds": len(rounds), "keys": len(states), "replicas_needed": replicas_needed,
                              "round_summary": summary[:SAMPLE] + summary[-1:] * (len(summary) > SAMPLE)}
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
