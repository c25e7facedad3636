"""causality: the versions of each key form a sane history (Dynamo §4.4 with dotted version vectors).

Every version the clients saw — created by an ok write, returned by a read, held by a replica in a
convergence poll — is a node of its key's version graph, named by its dot; an edge ``u -> v`` says the
write of ``v`` superseded ``u`` (its context held the siblings its read returned: ``supersedes``).
The graph stays sparse (no transitive closure); descent is decided by the versions' clocks. Anomalies:

* ``cycles``: the graph must be acyclic, and no two versions may each have seen the other — otherwise a
  dot was issued twice or a version claims to have seen its own descendant;
* ``reused_dots``: one dot observed with different elements, or acknowledged for two writes (the Riak
  kv679 family of dot reuse);
* ``context_lost``: ``v``'s clock lacks a dot ``u`` its write superseded: the context lost what it read
  (not judged when ``v``'s clock holds ``max_context_entries`` entries: truncation forgets by design,
  counted as ``truncated``; the same for ``dropped`` when a final sibling's clock is at the bound);
* ``dropped``: an acknowledged version that is not a final sibling and that no final sibling's clock
  holds — it vanished without a descendant that saw it;
* ``not_maximal``: a final sibling some other known version has seen — a superseded version came back;
* ``over_claimed``: an acknowledged write whose clock, its own dot aside, holds a dot that is not in its
  ``read_clock`` (the union of the clocks of the versions its read returned; ``{}`` for a blind write):
  the store made the new version claim to have seen a version the client never read, so that version
  is silently superseded (a plain vector clock stamping ``{a: 5}`` on a context of ``{a: 3}`` claims
  ``a/4``). Judged only on writes that carry ``read_clock``. Context truncation (``max_context_entries``)
  only ever removes entries from a context, so a truncated clock claims less, never more: it cannot
  make this check fire.

Final siblings are the versions returned by the ok final reads; a key without one cannot be judged.

*Deletes.* A DELETE writes a tombstone, which a GET does not return as a version but keeps in its
context: an ok read records that context's clock (``context_clock``), and the clocks of the final
reads' contexts count with the final siblings' as what the final state has seen (a key whose last
version is a tombstone is read as not found, its context holding the tombstone). Once every owner
holds only the same tombstones the nodes reap the key, so a final read may find nothing at all: an
acknowledged version held by no final clock is not ``dropped`` when it is a tombstone, or one whose
dot a tombstone's clock holds (counted as ``reaped``), a delete of unknown outcome counting as one
(its ``read_clock``: it may have happened, then been reaped); a tombstone that was lost instead of reaped
shows where it matters, as the versions it superseded coming back (``not_maximal``). Tombstones are
known from the deletes' completions (``version.deleted``) and from replica polls (``deleted``).
A ``not_maximal`` finding is not judged either when some final sibling's clock is at the bound: a
truncated clock forgets the dots of versions it superseded, which then come back as its siblings.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import networkx as nx

from dynacheck.history import CONVERGENCE, INFO, OK, HistoryIndex, Op, gc_paused, is_client, pairs

SAMPLE = 50
#: dynamod's default ``max_context_entries`` (test.json records the run's own).
DEFAULT_CONTEXT_BOUND = 64
KINDS = ("cycles", "reused_dots", "context_lost", "dropped", "not_maximal", "over_claimed")
CLAIM_SAMPLE = 10
Dot = tuple[str, int]


def at_bound(clock: dict[str, Any] | None, bound: int | None) -> bool:
    """Whether a version's CLOCK has as many entries as the node's context bound: its context may
    have been truncated, forgetting dots it had seen (``CausalContext.truncate``)."""
    if bound is None or not clock:
        return False
    return len(clock.get("vector") or {}) + len(clock.get("cloud") or ()) >= bound


def dot_name(dot: Dot) -> str:
    """``"actor/counter"``: how dots are named in graphs and reports."""
    return f"{dot[0]}/{dot[1]}"


def _has(clock: dict[str, Any] | None, dot: Dot) -> bool:
    """True when the history-shaped ``clock`` holds ``dot``."""
    if not clock:
        return False
    actor, counter = dot
    return counter <= (clock.get("vector") or {}).get(actor, 0) or [actor, counter] in (clock.get("cloud") or ())


def over_claims(clock: dict[str, Any], own: Dot, read_clock: dict[str, Any],
                limit: int = CLAIM_SAMPLE) -> tuple[int, list[Dot]]:
    """The dots ``clock`` holds besides ``own`` that ``read_clock`` lacks: their number and the first
    ``limit`` of them. A vector entry ``{a: n}`` claims every counter up to ``n``; counting per actor
    keeps this proportional to the clocks' sizes, not to the counters."""
    read_vector = read_clock.get("vector") or {}
    read_cloud = {(actor, n) for actor, n in read_clock.get("cloud") or ()}
    vector = clock.get("vector") or {}
    count, sample = 0, []
    for actor, top in vector.items():
        covered = read_vector.get(actor, 0)
        if top <= covered or (top == covered + 1 and own[0] == actor and own[1] == top):
            continue  # nothing claimed beyond the read, or only the version's own dot (most writes)
        # Counters covered+1..top are claimed; those in the read's cloud, and the version's own, were seen.
        seen = {n for a, n in read_cloud if a == actor and covered < n <= top}
        if own[0] == actor and covered < own[1] <= top:
            seen.add(own[1])
        count += top - covered - len(seen)
        counter = covered
        while len(sample) < limit and counter < top:
            counter += 1
            if counter not in seen:
                sample.append((actor, counter))
    for actor, n in {(actor, n) for actor, n in clock.get("cloud") or ()} if clock.get("cloud") else ():
        if (actor, n) == own or n <= vector.get(actor, 0) or n <= read_vector.get(actor, 0) or (actor, n) in read_cloud:
            continue
        count += 1
        if len(sample) < limit:
            sample.append((actor, n))
    return count, sorted(sample)


class Version:
    """What the history says about one dot of one key."""

    __slots__ = ("dot", "clock", "elements", "acked", "final", "time", "writes")

    def __init__(self, dot: Dot, time: int):
        self.dot, self.time = dot, time
        self.clock: dict[str, Any] | None = None
        self.elements: list[Any] | None = None
        self.acked = False
        self.final = False
        #: Values of the ok writes that reported this dot (more than one means it was issued twice).
        self.writes: list[Any] = []


class KeyVersions:
    """The versions of one key, the supersede edges between them, and what was found wrong."""

    def __init__(self, key: str):
        self.key = key
        self.versions: dict[Dot, Version] = {}
        self.edges: list[tuple[Dot, Dot]] = []
        #: Acknowledged writes that carry a ``read_clock``: (dot, clock, read_clock, time) to check claims.
        self.claims: list[tuple[Dot, dict[str, Any], dict[str, Any], int]] = []
        self.final_reads = 0
        self.anomalies: dict[str, list[dict[str, Any]]] = {kind: [] for kind in KINDS}
        #: Dots involved in a cycle, reuse, lost context or not-maximal finding; and the dropped ones.
        self.anomalous: set[Dot] = set()
        self.dropped: set[Dot] = set()
        self._element_sets: dict[Dot, list[frozenset[Any]]] = {}
        #: The node's bound on a context (``max_context_entries``): a clock that reached it may have
        #: forgotten dots by design (truncation), so what it lacks proves nothing.
        self.context_bound: int | None = None
        #: context_lost / dropped findings not made because the clock involved was at the bound.
        self.truncated = 0
        #: Dots of known tombstones (deletes), and the clocks of the final reads' contexts.
        self.tombstones: set[Dot] = set()
        #: The clocks of the tombstones deletes of unknown outcome may have written (their ``read_clock``).
        self.possible_tombstones: list[dict[str, Any]] = []
        self.final_contexts: list[dict[str, Any]] = []
        #: Acknowledged versions held by no final clock but by a tombstone's (or tombstones): reaped.
        self.reaped = 0

    def version(self, dot: Dot, time: int) -> Version:
        known = self.versions.get(dot)
        if known is None:
            known = self.versions[dot] = Version(dot, time)
        return known

    def observe(self, sibling: dict[str, Any], time: int, final: bool) -> None:
        """One sibling as a read or a poll returned it."""
        dot = (sibling["dot"][0], sibling["dot"][1])
        known = self.version(dot, time)
        elements = sibling.get("elements")
        if known.elements is None:
            known.elements = elements
        elif elements is not None and elements != known.elements:
            seen = self._element_sets.setdefault(dot, [frozenset(known.elements)])
            if frozenset(elements) not in seen:
                seen.append(frozenset(elements))
        if known.clock is None:
            known.clock = sibling.get("clock")
        known.final = known.final or final
        if sibling.get("deleted"):
            self.tombstones.add(dot)

    @property
    def final_dots(self) -> list[Dot]:
        return [dot for dot, version in self.versions.items() if version.final]

    def anomaly_count(self) -> int:
        return sum(len(entries) for entries in self.anomalies.values())

    def _flag(self, kind: str, dots: Iterable[Dot], **evidence: Any) -> None:
        (self.dropped if kind == "dropped" else self.anomalous).update(dots)
        self.anomalies[kind].append({"key": self.key, **evidence})

    def find_anomalies(self, graph: nx.DiGraph | None = None) -> None:
        """Run every check on this key (``graph`` saves rebuilding it when the caller has it)."""
        in_cycles: set[Dot] = set()
        # The networkx graph only to report cycles: building one per key cost more than every check.
        if not (self._acyclic() if graph is None else nx.is_directed_acyclic_graph(graph)):
            graph = build_graph(self) if graph is None else graph
            for component in nx.strongly_connected_components(graph):
                if len(component) > 1 or graph.has_edge(next(iter(component)), next(iter(component))):
                    cycle = nx.find_cycle(graph.subgraph(component))
                    in_cycles.update(graph.nodes[name]["dot"] for name in component)
                    self._flag("cycles", (graph.nodes[u]["dot"] for u, _ in cycle), via="supersedes",
                               cycle=[u for u, _ in cycle])
        self._check_reuse()
        self._check_edges(in_cycles)
        self._check_claims()
        if self.final_reads:
            self._check_finals()

    def _acyclic(self) -> bool:
        """Whether the supersede edges form no cycle (Kahn's algorithm over the dots; a self-loop is one)."""
        successors: dict[Dot, list[Dot]] = defaultdict(list)
        waiting = dict.fromkeys(self.versions, 0)  # per dot, its edges in from dots not yet ordered
        for u, v in self.edges:
            successors[u].append(v)
            waiting.setdefault(u, 0)
            waiting[v] = waiting.get(v, 0) + 1
        ready = [dot for dot, count in waiting.items() if not count]
        ordered = 0
        while ready:
            ordered += 1
            for v in successors.get(ready.pop(), ()):
                waiting[v] -= 1
                if not waiting[v]:
                    ready.append(v)
        return ordered == len(waiting)

    def _check_reuse(self) -> None:
        for dot, sets in self._element_sets.items():
            if len(sets) > 1:
                self._flag("reused_dots", [dot], dot=dot_name(dot), element_sets=len(sets),
                           sizes=[len(s) for s in sets][:10])
        for dot, version in self.versions.items():
            if len(version.writes) > 1:
                self._flag("reused_dots", [dot], dot=dot_name(dot), writes=version.writes[:10])

    def _check_edges(self, in_cycles: set[Dot]) -> None:
        versions = self.versions
        for u, v in self.edges:
            if u == v or (u in in_cycles and v in in_cycles):
                continue  # already reported as a cycle of the graph
            clock_v = versions[v].clock
            if clock_v is not None and not _has(clock_v, u):
                if self._at_bound(clock_v):
                    self.truncated += 1
                else:
                    self._flag("context_lost", [u, v], superseded=dot_name(u), by=dot_name(v))
            if _has(versions[u].clock, v):
                self._flag("cycles", [u, v], via="clocks", cycle=[dot_name(u), dot_name(v)])

    def _at_bound(self, clock: dict[str, Any] | None) -> bool:
        return at_bound(clock, self.context_bound)

    def _check_claims(self) -> None:
        for dot, clock, read_clock, time in self.claims:
            count, unread = over_claims(clock, dot, read_clock)
            if count:
                self._flag("over_claimed", [dot], dot=dot_name(dot), unread_count=count,
                           unread=[dot_name(d) for d in unread], acked_ms=round(time / 1e6, 3))

    def _check_finals(self) -> None:
        finals = [self.versions[dot] for dot in self.final_dots]
        # A dot is in some final clock iff it is in their union: the vectors' maxima plus the clouds.
        vector, cloud = _union([final.clock for final in finals] + self.final_contexts)
        truncated = any(self._at_bound(final.clock) for final in finals)
        deleted = _union([self.versions[dot].clock for dot in self.tombstones] + self.possible_tombstones)
        for dot, version in self.versions.items():
            if version.acked and not version.final and not (dot[1] <= vector.get(dot[0], 0) or dot in cloud):
                if dot in self.tombstones or dot[1] <= deleted[0].get(dot[0], 0) or dot in deleted[1]:
                    self.reaped += 1
                    continue
                if truncated:
                    self.truncated += 1
                    continue
                self._flag("dropped", [dot], dot=dot_name(dot), acked_ms=round(version.time / 1e6, 3),
                           final_siblings=[dot_name(f.dot) for f in finals][:10])
        self._check_maximal({f.dot for f in finals}, truncated)

    def _check_maximal(self, finals: set[Dot], truncated: bool = False) -> None:
        """Flag each final sibling some other version's clock holds. Finals are indexed by actor and
        counter, and each is flagged once, so blind-write keys with thousands of siblings stay linear."""
        unflagged = set(finals)
        pending: dict[str, list[int]] = defaultdict(list)
        for actor, counter in sorted(finals):
            pending[actor].append(counter)
        for dot, version in self.versions.items():
            clock = version.clock
            if not clock or not unflagged:
                continue
            held = [(actor, n) for actor, n in (clock.get("cloud") or ()) if (actor, n) in unflagged]
            for actor, n in (clock.get("vector") or {}).items():
                counters = pending.get(actor)
                if counters:
                    held += [(actor, c) for c in counters[:bisect_right(counters, n)]]
            for final in held:
                if final != dot and final in unflagged:
                    unflagged.discard(final)
                    pending[final[0]].remove(final[1])
                    if truncated:  # a final clock at the bound may have forgotten it: it came back by design
                        self.truncated += 1
                        continue
                    self._flag("not_maximal", [final], final=dot_name(final), seen_by=dot_name(dot))


def _union(clocks: Iterable[dict[str, Any] | None]) -> tuple[dict[str, int], set[Dot]]:
    """The per-actor maxima and the union of the clouds of history-shaped clocks."""
    vector: dict[str, int] = {}
    cloud: set[Dot] = set()
    for clock in clocks:
        for actor, n in ((clock or {}).get("vector") or {}).items():
            vector[actor] = max(n, vector.get(actor, 0))
        cloud.update((actor, n) for actor, n in (clock or {}).get("cloud") or ())
    return vector, cloud


def analyse(history: list[Op], keys: Iterable[str] | None = None,
            index: HistoryIndex | None = None) -> dict[str, KeyVersions]:
    """One pass over the history: the versions and supersede edges of every key (or only ``keys``)."""
    wanted = None if keys is None else set(keys)
    per_key: dict[str, KeyVersions] = {}

    def of(key: str) -> KeyVersions:
        found = per_key.get(key)
        if found is None:
            found = per_key[key] = KeyVersions(key)
        return found

    for invoke, completion in (pairs(history) if index is None else index.pairs):
        if completion is None or (completion["type"] != OK and not _possible_delete(completion)):
            continue
        key = str(invoke.get("key"))
        if wanted is not None and key not in wanted:
            continue
        if invoke.get("process") == CONVERGENCE:
            if invoke.get("f", "replica") != "replica":
                continue  # a status snapshot, not a replica's siblings
            for sibling in completion.get("value") or ():
                of(key).observe(sibling, completion["time"], False)
        elif not is_client(invoke):
            continue
        elif invoke.get("f") == "read":
            kv, final = of(key), bool(invoke.get("final") or completion.get("final"))
            kv.final_reads += final
            for sibling in completion.get("versions") or ():
                kv.observe(sibling, completion["time"], final)
            if final and completion.get("context_clock"):
                kv.final_contexts.append(completion["context_clock"])
        elif completion["type"] == INFO:  # a delete that may have happened, and been reaped
            of(key).possible_tombstones.append(completion["read_clock"])
        elif written := completion.get("version"):
            kv, time = of(key), completion["time"]
            dot = (written["dot"][0], written["dot"][1])
            if written.get("elements") is not None:
                kv.observe(written, time, False)
            version = kv.version(dot, time)
            version.acked, version.time = True, time
            clock = written.get("clock")
            version.clock = clock or version.clock
            version.writes.append(completion.get("value", invoke.get("value")))
            if written.get("deleted"):
                kv.tombstones.add(dot)
            read_clock = completion.get("read_clock")
            if read_clock is not None and clock is not None:
                kv.claims.append((dot, clock, read_clock, time))
            for superseded in completion.get("supersedes") or ():
                u = (superseded[0], superseded[1])
                kv.version(u, time)
                kv.edges.append((u, dot))
    return per_key


def _possible_delete(completion: Op) -> bool:
    """A DELETE of unknown outcome that says what its tombstone would have seen."""
    return completion["type"] == INFO and completion.get("f") == "delete" and bool(completion.get("read_clock"))


def context_bound(test: dict[str, Any]) -> int:
    """The run's bound on a causal context (``test.json``'s ``max_context_entries``, else dynamod's default)."""
    return int(test.get("max_context_entries") or DEFAULT_CONTEXT_BOUND)


def analysed(history: list[Op], bound: int | None, index: HistoryIndex | None = None) -> dict[str, KeyVersions]:
    """Every key's versions with their anomalies found under the context ``bound``: computed once per
    ``index``, so graphs draws what this checker judged without analysing the history again."""
    index = HistoryIndex(history) if index is None else index

    def compute() -> dict[str, KeyVersions]:
        with gc_paused():
            per_key = analyse(history, index=index)
            for kv in per_key.values():
                kv.context_bound = bound
                kv.find_anomalies()
        return per_key

    return index.memo(("causality", bound), compute)


def build_graph(kv: KeyVersions) -> nx.DiGraph:
    """The key's version graph: nodes named ``"actor/counter"`` with attributes ``dot``, ``elements``,
    ``acked``, ``final``, ``time`` (ns); edges from each superseded version to its superseder."""
    graph = nx.DiGraph(key=kv.key)
    graph.add_nodes_from((dot_name(dot), {"dot": dot, "elements": v.elements, "acked": v.acked, "final": v.final,
                                          "time": v.time}) for dot, v in kv.versions.items())
    graph.add_edges_from((dot_name(u), dot_name(v)) for u, v in kv.edges)
    return graph


def version_graph(history: list[Op], key: str) -> nx.DiGraph:
    """The version graph of one key, anomalies found (see ``build_graph``)."""
    kv = analyse(history, [key]).get(key) or KeyVersions(key)
    graph = build_graph(kv)
    kv.find_anomalies(graph)
    return graph


def interesting_keys(per_key: dict[str, KeyVersions], limit: int = 5) -> list[str]:
    """Keys worth a look: those with anomalies first, then those with the most final siblings, then the
    most versions."""
    ranked = sorted(per_key.values(), key=lambda kv: (-kv.anomaly_count(), -len(kv.final_dots),
                                                      -len(kv.versions), kv.key))
    return [kv.key for kv in ranked[:limit]]


def _entries(clock: dict[str, Any] | None) -> int:
    """How many entries a clock holds (vector actors plus cloud dots): what truncation bounds."""
    return len((clock or {}).get("vector") or {}) + len((clock or {}).get("cloud") or ()) if clock else 0


def check(test: dict[str, Any], history: list[Op], run_dir: Path | None = None,
          index: HistoryIndex | None = None) -> dict[str, Any]:
    """Check every key's version graph; False on any anomaly, unknown when some key with acknowledged
    versions had no final read (or nothing was seen at all), else True."""
    bound = context_bound(test)
    per_key = analysed(history, bound, index)
    unjudged = sorted(key for key, kv in per_key.items()
                      if not kv.final_reads and any(v.acked for v in kv.versions.values()))
    result: dict[str, Any] = {
        "keys": len(per_key),
        "versions": sum(len(kv.versions) for kv in per_key.values()),
        "acked_versions": sum(v.acked for kv in per_key.values() for v in kv.versions.values()),
        "edges": sum(len(kv.edges) for kv in per_key.values()),
        "max_final_siblings": max((len(kv.final_dots) for kv in per_key.values()), default=0),
        "unjudged_key_count": len(unjudged), "unjudged_keys": unjudged[:SAMPLE],
        "interesting_keys": interesting_keys(per_key),
        "context_bound": bound, "truncated_count": sum(kv.truncated for kv in per_key.values()),
        "tombstones": sum(len(kv.tombstones) for kv in per_key.values()),
        "reaped_count": sum(kv.reaped for kv in per_key.values()),
        "max_context_entries_seen": max((_entries(v.clock) for kv in per_key.values() for v in kv.versions.values()),
                                        default=0),
    }
    anomalies = defaultdict(list)
    for key in sorted(per_key):
        for kind, entries in per_key[key].anomalies.items():
            anomalies[kind] += entries
    for kind in KINDS:
        result[f"{kind}_count"] = len(anomalies[kind])
        result[kind] = anomalies[kind][:SAMPLE]
    if any(anomalies[kind] for kind in KINDS):
        result["valid"] = False
    elif not result["versions"] or unjudged:
        result["valid"] = "unknown"
    else:
        result["valid"] = True
    return result
