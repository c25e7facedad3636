"""Object versioning: dotted causal contexts and sibling sets (Dynamo §4.4, with DVV's fix).

Dynamo tags each version with a vector clock and keeps every version that no other version
descends from. Plain vector clocks conflate "the coordinator's counter" with "what the writer had
seen", which is how Riak grew sibling explosions and, with reused counters, lost writes (kv679).
We follow dotted version vectors instead:

* every version carries a **dot** ``(actor, counter)`` that names it uniquely, and a **past**: the
  causal context its writer had seen (a ``CausalContext``);
* a causal context is a version vector (``actor -> n`` meaning "dots 1..n of actor") plus a *cloud*
  of exact dots beyond it, so a context can say "saw dot 2 of a but not dot 1";
* version ``x`` supersedes version ``y`` exactly when ``y``'s dot is in ``x``'s past.

Actors are per-key *epochs* of a node incarnation (``node~incarnation.epoch``): a node picks a fresh
epoch the first time it coordinates a write on a record it holds, and counts that epoch's dots in the
record itself. A node that lost its disk gets a new incarnation; a record deleted and re-created gets
a new epoch, and so does a record first written after its node restarted (the store hands
``next_dot`` such a record without its actor: a crash may have rolled its counter back); so a dot
is never issued twice (see ``Record.next_dot`` and ``dynamod.storage.store``).

Everything here is pure: time and actor allocation are arguments.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import attrs

Dot = tuple[str, int]

#: Default bound on the entries (version-vector actors plus cloud dots) of one causal context.
DEFAULT_MAX_CONTEXT_ENTRIES = 64


@attrs.frozen
class CausalContext:
    """A set of dots: a version vector plus a cloud of dots beyond it, always kept normalised."""

    vector: Mapping[str, int] = attrs.field(factory=dict)
    cloud: frozenset[Dot] = attrs.field(factory=frozenset)

    @classmethod
    def of(cls, vector: Mapping[str, int] | None = None, cloud: Iterable[Dot] = ()) -> CausalContext:
        """Build a normalised context: cloud dots already covered are dropped, contiguous ones folded."""
        merged = {actor: n for actor, n in (vector or {}).items() if n > 0}
        remaining = {dot for dot in cloud if dot[1] > merged.get(dot[0], 0)}
        if not remaining:
            return cls(vector=merged, cloud=frozenset())
        for dot in sorted(remaining):
            actor, counter = dot
            # Sorted order visits an actor's dots in ascending counters, so one pass folds runs.
            if counter == merged.get(actor, 0) + 1:
                merged[actor] = counter
                remaining.discard(dot)
        return cls(vector=merged, cloud=frozenset(remaining))

    def contains(self, dot: Dot) -> bool:
        """True when this context has seen ``dot``."""
        actor, counter = dot
        return counter <= self.vector.get(actor, 0) or dot in self.cloud

    def add(self, dot: Dot) -> CausalContext:
        """This context plus one dot."""
        return CausalContext.of(self.vector, self.cloud | {dot})

    def join(self, other: CausalContext) -> CausalContext:
        """The union of two contexts (least upper bound)."""
        vector = dict(self.vector)
        for actor, n in other.vector.items():
            if n > vector.get(actor, 0):
                vector[actor] = n
        return CausalContext.of(vector, self.cloud | other.cloud)

    def descends(self, other: CausalContext) -> bool:
        """True when this context has seen every dot of ``other`` (a partial order)."""
        for actor, n in other.vector.items():
            if self.vector.get(actor, 0) < n:
                # Normalised contexts never hold the dot right after their vector in the cloud,
                # so a shorter vector entry means a missing dot.
                return False
        return all(self.contains(dot) for dot in other.cloud)

    def max_counter(self, actor: str) -> int:
        """Highest counter of ``actor`` this context mentions."""
        best = self.vector.get(actor, 0)
        for a, counter in self.cloud:
            if a == actor and counter > best:
                best = counter
        return best

    def size(self) -> int:
        """Number of entries, the measure the truncation bound applies to."""
        return len(self.vector) + len(self.cloud)

    def truncate(self, max_entries: int) -> CausalContext:
        """Drop entries beyond ``max_entries``: cloud dots first (lowest counters), then the vector
        actors with the smallest counters.

        Forgetting a dot only makes a context claim *less*: a version that was superseded may come
        back as a sibling from a stale replica, but nothing a client wrote is ever dropped.
        """
        if self.size() <= max_entries:
            return self
        cloud = sorted(self.cloud, key=lambda d: (d[1], d[0]))
        vector = sorted(self.vector.items(), key=lambda item: (item[1], item[0]))
        excess = self.size() - max_entries
        drop_cloud = min(excess, len(cloud))
        cloud = cloud[drop_cloud:]
        excess -= drop_cloud
        vector = vector[excess:]
        return CausalContext(vector=dict(vector), cloud=frozenset(cloud))

    def is_empty(self) -> bool:
        """True when nothing has been seen."""
        return not self.vector and not self.cloud


EMPTY_CONTEXT = CausalContext()


@attrs.frozen
class Sibling:
    """One concurrent version of an object: its dot, what its writer had seen, and its payload."""

    dot: Dot
    past: CausalContext
    value: bytes
    deleted: bool = False
    #: Coordinator wall-clock time in milliseconds: used by lww mode and for reports only.
    timestamp: int = 0

    def clock(self) -> CausalContext:
        """Everything this version has seen, itself included."""
        return self.past.add(self.dot)

    def supersedes(self, other: Sibling) -> bool:
        """True when this version's writer had seen ``other``."""
        return self.past.contains(other.dot)


def reconcile(*sibling_sets: Iterable[Sibling]) -> tuple[Sibling, ...]:
    """Syntactic reconciliation: the union of the given versions, minus every version whose dot is
    in another version's past. Identical dots are the same version. Commutative, associative and
    idempotent; the result is ordered by dot so equal sets compare equal."""
    by_dot: dict[Dot, Sibling] = {}
    for siblings in sibling_sets:
        for sibling in siblings:
            by_dot.setdefault(sibling.dot, sibling)
    survivors = [
        s for s in by_dot.values()
        if not any(other.dot != s.dot and other.supersedes(s) for other in by_dot.values())
    ]
    return tuple(sorted(survivors, key=lambda s: s.dot))


def reconcile_lww(*sibling_sets: Iterable[Sibling]) -> tuple[Sibling, ...]:
    """Last-write-wins: keep only the version with the newest timestamp (dot breaks ties)."""
    best: Sibling | None = None
    for siblings in sibling_sets:
        for sibling in siblings:
            if best is None or (sibling.timestamp, sibling.dot) > (best.timestamp, best.dot):
                best = sibling
    return () if best is None else (best,)


def context_of(siblings: Iterable[Sibling]) -> CausalContext:
    """The context a reader gets: every sibling's dot and everything the siblings had seen."""
    context = EMPTY_CONTEXT
    for sibling in siblings:
        context = context.join(sibling.clock())
    return context


@attrs.frozen
class Record:
    """What one replica stores for a key: the sibling set plus this node's private write counter.

    ``actor`` and ``counter`` never leave the node: they let it issue unique dots for this key
    while it holds the record continuously. A record that is deleted and re-created starts a new
    epoch (a new actor), so counters are never reused even when older dots still live elsewhere.
    """

    siblings: tuple[Sibling, ...] = ()
    actor: str | None = None
    counter: int = 0
    #: Owners this node holds the record for as a sloppy-quorum fallback (Dynamo §4.6): the
    #: versions are handed to each of them, and the record dropped once none is left.
    hints: frozenset[str] = frozenset()

    def next_dot(self, context: CausalContext, allocate_actor: Callable[[], str]) -> tuple[Record, Dot]:
        """Allocate the dot of a new version coordinated here. ``allocate_actor`` is called only
        when this record has no actor yet and must return one this node never used before."""
        actor = self.actor
        if actor is not None and self._highest_known(actor, context) > self.counter:
            # A context or a stored version claims a dot of this epoch beyond the highest this node
            # issued: only this node issues the epoch's dots, so the claim is forged or corrupt.
            # Counting on from it would let one request push the counter to the integer limit
            # and make the key unwritable; a fresh epoch nobody has seen is as unique.
            actor = None
        if actor is None:
            actor = allocate_actor()
            seen = self._highest_known(actor, context)
        else:
            seen = self.counter
        dot = (actor, seen + 1)
        return attrs.evolve(self, actor=actor, counter=seen + 1), dot

    def _highest_known(self, actor: str, context: CausalContext) -> int:
        """The highest counter of ``actor`` that ``context`` or any stored version mentions."""
        return max([context.max_counter(actor)]
                   + [s.past.max_counter(actor) for s in self.siblings]
                   + [s.dot[1] for s in self.siblings if s.dot[0] == actor])


def put_version(
    record: Record | None,
    *,
    value: bytes,
    context: CausalContext,
    allocate_actor: Callable[[], str],
    timestamp: int,
    deleted: bool = False,
    lww: bool = False,
    max_context_entries: int = DEFAULT_MAX_CONTEXT_ENTRIES,
) -> tuple[Record, Sibling]:
    """Coordinate a write on the local record: stamp a new version that supersedes exactly what
    ``context`` has seen and reconcile it with the stored siblings. Returns the new record and the
    new version."""
    record = record or Record()
    record, dot = record.next_dot(context, allocate_actor)
    past = context.truncate(max_context_entries)
    new = Sibling(dot=dot, past=past, value=value, deleted=deleted, timestamp=timestamp)
    merge = reconcile_lww if lww else reconcile
    return attrs.evolve(record, siblings=merge(record.siblings, (new,))), new


def merge_into(record: Record | None, incoming: Iterable[Sibling], *, lww: bool = False) -> Record:
    """Apply a replica update: reconcile the incoming versions with the stored ones."""
    record = record or Record()
    merge = reconcile_lww if lww else reconcile
    return attrs.evolve(record, siblings=merge(record.siblings, incoming))


def with_hint(record: Record, owner: str | None) -> Record:
    """``record`` also held on behalf of ``owner`` (None: for no one)."""
    if owner is None or owner in record.hints:
        return record
    return attrs.evolve(record, hints=record.hints | {owner})


def covered_by(siblings: Iterable[Sibling], delivered: Iterable[Sibling]) -> bool:
    """True when every one of ``siblings`` was delivered or is superseded by a version that was
    (so a copy holding ``siblings`` adds nothing once ``delivered`` is acknowledged)."""
    sent = tuple(delivered)
    dots = {s.dot for s in sent}
    return all(sibling.dot in dots or any(s.supersedes(sibling) for s in sent) for sibling in siblings)


def after_transfer(record: Record | None, delivered: Iterable[Sibling]) -> Record | None:
    """A former replica's record once every current owner acknowledged ``delivered``: dropped,
    unless a version arrived meanwhile that was not delivered, or it is held as a fallback (hints
    are handed off separately)."""
    if record is None or record.hints or not covered_by(record.siblings, delivered):
        return record
    return None


def after_handoff(record: Record | None, owner: str, delivered: Iterable[Sibling],
                  keep_copy: bool) -> Record | None:
    """The fallback's record once ``owner`` acknowledged ``delivered``: the hint goes only if
    every version held now was delivered or is superseded by one that was (a write that arrived
    during the handoff keeps it); without hints the record is dropped unless ``keep_copy`` (this
    node became an owner itself)."""
    if record is None or owner not in record.hints or not covered_by(record.siblings, delivered):
        return record
    remaining = record.hints - {owner}
    if not remaining and not keep_copy:
        return None
    return attrs.evolve(record, hints=remaining)


def live_values(siblings: Iterable[Sibling]) -> list[bytes]:
    """Values of the siblings that are not tombstones, in dot order."""
    return [s.value for s in siblings if not s.deleted]
