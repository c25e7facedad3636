"""Cluster membership as versioned, gossiped state (Dynamo §4.8.1, §4.9).

Every node holds a ``ClusterState``: the member table and the partition ownership, each entry
versioned. Nodes exchange states with a random peer every round and keep the merge, which is a
per-entry maximum under a total order, hence commutative, associative and idempotent: any
order of exchanges converges to the same state.

* A member entry is ordered by ``(version, rank of its status, peer, http)``: a change is
  published by writing the entry with a higher version; at equal versions ``left`` beats
  ``leaving`` beats ``member`` beats ``joining``, so a departure is never undone by a stale copy.
* The ring is ordered by ``(version, author, ownership)``: a membership change writes a new
  ownership with the next version. Two changes planned concurrently from the same version are
  resolved deterministically (the higher author wins); the node whose change lost re-plans it
  (``own_next_step``), so concurrent joins and leaves all take effect.
* Transfer progress is soft state: each node publishes ``(seq, ring version it has acted on,
  keys it still holds for others)`` under its own name with an ever-growing ``seq``; the merge
  keeps the highest ``seq``. A joining node becomes a member, and a leaving node leaves, only once
  every active node reports the current ring with nothing left to transfer.
* Dead nodes (Riak's force-remove and force-replace): ``plan_remove`` marks a member ``left`` at
  once and gives its partitions to the others; ``plan_replace`` marks it ``left`` and renames its
  partitions to a new node, which stays ``joining`` until anti-entropy has filled it
  (``own_next_step``'s ``filled``). ``replaced`` (dead -> new, merged per entry by maximum)
  tells the nodes still holding hints for the dead node where those go.
* Changes with a node down: ``settled``, ``in_transition`` and ``own_next_step`` take the
  deciding node's ``is_up``; a member it sees down neither blocks a change's start nor its
  completion (its stale progress is ignored), and hints held for a down node are not counted as
  transfer work by the holders (``dynamod.transfers``).
* ``cluster`` names the cluster (a digest of its founding members): gossip from another cluster
  is refused, except that a node alone in its own cluster adopts one that lists it as a member.

Whether a member is *reachable* is not gossiped: each node decides that locally
(``dynamod.core.detector``). Pure: no I/O, no clock.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs

from dynamod.core.addresses import split_host_port
from dynamod.core.ring import Ring, ownership_moves, replica_changes

JOINING, MEMBER, LEAVING, LEFT = "joining", "member", "leaving", "left"
STATUS_RANK = {JOINING: 0, MEMBER: 1, LEAVING: 2, LEFT: 3}
#: Members that own, or are about to own or give up, partitions.
ACTIVE = (JOINING, MEMBER, LEAVING)


class MalformedState(ValueError):
    """Gossip that does not decode to a cluster state: ignored, never merged."""


@attrs.frozen
class MemberEntry:
    """One member as the cluster knows it."""

    id: str
    peer: str
    http: str
    status: str = MEMBER
    version: int = 1

    def order(self) -> tuple:
        """The total order the merge keeps the maximum of."""
        return (self.version, STATUS_RANK[self.status], self.peer, self.http)


@attrs.frozen
class Progress:
    """A node's transfer progress as it last published it."""

    seq: int
    ring_version: int
    pending: int


def cluster_id(members: Iterable[MemberEntry], partitions: int) -> str:
    """The name of a cluster founded by ``members``: the same on every node given the same list."""
    founding = ";".join(f"{m.id}={m.peer}" for m in sorted(members, key=lambda m: m.id))
    return hashlib.sha256(f"{partitions}|{founding}".encode()).hexdigest()[:16]


@attrs.frozen
class ClusterState:
    """Members and partition ownership, each versioned for merging."""

    members: Mapping[str, MemberEntry]
    ownership: tuple[str, ...]
    ring_version: int = 1
    ring_author: str = ""
    cluster: str = ""
    progress: Mapping[str, Progress] = attrs.field(factory=dict)
    #: Dead member -> the node that replaced it (``plan_replace``).
    replaced: Mapping[str, str] = attrs.field(factory=dict)

    @classmethod
    def initial(cls, members: list[MemberEntry], partitions: int, author: str = "") -> ClusterState:
        """A fresh cluster of ``members`` with round-robin ownership."""
        ring = Ring.initial([m.id for m in members], partitions)
        return cls(members={m.id: m for m in members}, ownership=ring.ownership, ring_version=1,
                   ring_author=author, cluster=cluster_id(members, partitions))

    @property
    def ring(self) -> Ring:
        """The ownership as a ``Ring``."""
        return Ring(self.ownership)

    def ring_order(self) -> tuple:
        return (self.ring_version, self.ring_author, self.ownership)

    def merge(self, other: ClusterState) -> ClusterState:
        """The per-entry maximum of two states."""
        members = dict(self.members)
        for member_id, entry in other.members.items():
            mine = members.get(member_id)
            if mine is None or entry.order() > mine.order():
                members[member_id] = entry
        newer = other if other.ring_order() > self.ring_order() else self
        progress = dict(self.progress)
        for node, theirs in other.progress.items():
            mine = progress.get(node)
            if mine is None or (theirs.seq, theirs.ring_version, theirs.pending) > (
                    mine.seq, mine.ring_version, mine.pending):
                progress[node] = theirs
        replaced = dict(self.replaced)
        for dead, new in other.replaced.items():
            replaced[dead] = max(new, replaced.get(dead, new))
        return ClusterState(members=members, ownership=newer.ownership, ring_version=newer.ring_version,
                            ring_author=newer.ring_author, cluster=max(self.cluster, other.cluster),
                            progress=progress, replaced=replaced)

    def active(self) -> list[MemberEntry]:
        """Members that are joining, members or leaving, by id."""
        return sorted((m for m in self.members.values() if m.status in ACTIVE), key=lambda m: m.id)

    def status_of(self, member_id: str) -> str | None:
        entry = self.members.get(member_id)
        return entry.status if entry else None

    def with_progress(self, node: str, pending: int, now_ms: int) -> ClusterState:
        """``node``'s progress on the current ring published, unless it is unchanged. ``seq`` grows
        with the wall clock so a restarted node's reports still win over its old ones."""
        mine = self.progress.get(node)
        if mine is not None and (mine.ring_version, mine.pending) == (self.ring_version, pending):
            return self
        seq = max(now_ms, mine.seq + 1 if mine else 0)
        return attrs.evolve(self, progress={**self.progress, node: Progress(seq, self.ring_version, pending)})

    def transfers_pending(self) -> dict[str, int | None]:
        """Per active member: keys it still holds for others on the current ring (None: it has not
        reported on the current ring yet)."""
        report: dict[str, int | None] = {}
        for member in self.active():
            progress = self.progress.get(member.id)
            current = progress is not None and progress.ring_version >= self.ring_version
            report[member.id] = progress.pending if current else None
        return report

    def settled(self, is_up: Callable[[str], bool] | None = None) -> bool:
        """Every active member acts on the current ring and holds nothing for others; with
        ``is_up``, only the members it calls up are asked (a down member never blocks)."""
        return all(pending == 0 for node, pending in self.transfers_pending().items()
                   if is_up is None or is_up(node))

    def in_transition(self, is_up: Callable[[str], bool] | None = None) -> bool:
        """A change has not finished (a member joining or leaving, or transfers pending), among
        the members ``is_up`` calls up (all of them without it)."""
        considered = [m for m in self.active() if is_up is None or is_up(m.id)]
        return any(m.status != MEMBER for m in considered) or not self.settled(is_up)

    def replacing(self, member_id: str) -> str | None:
        """The dead member ``member_id`` replaces, if it joined as a replacement."""
        return next((dead for dead, new in sorted(self.replaced.items()) if new == member_id), None)

    def with_member(self, entry: MemberEntry) -> ClusterState:
        """This state with ``entry`` published (its version one above what is known)."""
        known = self.members.get(entry.id)
        published = attrs.evolve(entry, version=(known.version + 1) if known else entry.version)
        return attrs.evolve(self, members={**self.members, entry.id: published})

    def with_ring(self, ring: Ring, author: str) -> ClusterState:
        """This state with a new ownership, versioned after the current one."""
        return attrs.evolve(self, ownership=ring.ownership, ring_version=self.ring_version + 1, ring_author=author)

    def plan_join(self, entry: MemberEntry, n: int, author: str) -> ClusterState:
        """Admit ``entry`` as joining and give it its share of partitions (only those move)."""
        if entry.id in self.members and self.members[entry.id].status in (JOINING, MEMBER):
            raise ValueError(f"{entry.id} is already a member")
        state = self.with_member(attrs.evolve(entry, status=JOINING))
        return state.with_ring(self.ring.claim(entry.id, n), author)

    def own_next_step(self, me: str, n: int, is_up: Callable[[str], bool] | None = None,
                      filled: bool = True) -> ClusterState:
        """The next step of ``me``'s own join or leave, or this state when there is none: re-plan a
        claim, release or replacement that lost to a concurrent change, become a member once the
        transfers of the join settled (and, for a replacement, once it is ``filled``), publish
        ``left`` once the leave's have. ``is_up`` is ``me``'s failure detector: members it sees
        down do not hold the change open."""
        entry = self.members.get(me)
        if entry is None:
            return self
        repaired = self._without_departed_owners(me, n)
        if repaired is not self:
            return repaired
        ring = self.ring
        if entry.status == JOINING:
            if me not in ring.ownership:
                claimed = ring.claim(me, n)
                return self.with_ring(claimed, me) if claimed != ring else self
            if self.settled(is_up) and (filled or self.replacing(me) is None):
                return self.with_member(attrs.evolve(entry, status=MEMBER))
        if entry.status == LEAVING:
            if me in ring.ownership:
                if len(ring.members) > 1:
                    return self.with_ring(ring.release(me, n), me)
                # Everyone else left concurrently: the last owner stays, its leave is cancelled.
                return self.with_member(attrs.evolve(entry, status=MEMBER))
            if self.settled(is_up):
                return self.with_member(attrs.evolve(entry, status=LEFT))
        return self

    def _without_departed_owners(self, me: str, n: int) -> ClusterState:
        """A ring still naming a member that has left (a remove or replace lost to a concurrent
        ring change): its partitions renamed to its replacement, or released. Every node may do
        this; from one state they all plan the same ownership."""
        ring = self.ring
        departed = [owner for owner in ring.members if self.status_of(owner) == LEFT]
        if not departed:
            return self
        for dead in departed:
            new = self.replaced.get(dead)
            if new is not None and self.status_of(new) in ACTIVE and new not in ring.ownership:
                ring = ring.rename(dead, new)
            elif len(ring.members) > 1:
                ring = ring.release(dead, n)
        return self.with_ring(ring, me) if ring != self.ring else self

    def plan_leave(self, member_id: str, n: int, author: str) -> ClusterState:
        """Mark ``member_id`` leaving and hand its partitions to the others (only those move)."""
        entry = self.members.get(member_id)
        if entry is None or entry.status == LEFT:
            raise ValueError(f"{member_id} is not a member")
        active = [m for m in self.members.values() if m.status in (JOINING, MEMBER)]
        if len(active) <= 1:
            raise ValueError("the last member cannot leave")
        state = self.with_member(attrs.evolve(entry, status=LEAVING))
        return state.with_ring(self.ring.release(member_id, n), author)

    def plan_remove(self, dead: str, n: int, author: str) -> ClusterState:
        """``dead`` is gone for good: it is ``left`` at once and its partitions go to the others
        (``Ring.release``: only those change owner). Nothing is read from it; the new replicas of
        its partitions are filled from the surviving ones."""
        entry = self.members.get(dead)
        if entry is None or entry.status not in ACTIVE:
            raise ValueError(f"{dead} is not a member")
        if [m.id for m in self.active()] == [dead] or set(self.ring.members) == {dead}:
            raise ValueError("the last member cannot be removed")
        state = self.with_member(attrs.evolve(entry, status=LEFT))
        return state.with_ring(self.ring.release(dead, n), author)

    def plan_replace(self, new: MemberEntry, dead: str, author: str) -> ClusterState:
        """``new`` takes over exactly ``dead``'s partitions (an ownership rename: nothing else
        moves); ``dead`` is ``left``, ``new`` is ``joining`` until it has been filled."""
        entry = self.members.get(dead)
        if entry is None or entry.status not in ACTIVE:
            raise ValueError(f"{dead} is not a member")
        if new.id == dead:
            raise ValueError("a replacement needs an id of its own")
        if self.status_of(new.id) in ACTIVE:
            raise ValueError(f"{new.id} is already a member")
        state = self.with_member(attrs.evolve(new, status=JOINING)).with_member(attrs.evolve(entry, status=LEFT))
        state = attrs.evolve(state, replaced={**self.replaced, dead: new.id})
        return state.with_ring(self.ring.rename(dead, new.id), author)


def at_risk(ring: Ring, dead: str, n: int, is_up: Callable[[str], bool]) -> dict[int, list[str]]:
    """Partitions ``dead`` is a replica of whose other replicas are not all up, with those that
    are down: a write acknowledged only by ``dead`` and them, whose fallback copies are also
    gone, is lost when ``dead`` is removed or replaced."""
    risky = {}
    for partition in range(ring.partitions):
        replicas = ring.preference_list_for_partition(partition, n)
        if dead in replicas:
            down = [node for node in replicas if node != dead and not is_up(node)]
            if down:
                risky[partition] = down
    return risky


def plan_document(change: str, node: str, before: ClusterState, after: ClusterState, n: int,
                  is_up: Callable[[str], bool], replaces: str | None = None) -> dict[str, Any]:
    """The staged plan of a membership change, as ``dynactl --dry-run`` shows it (like
    ``riak-admin cluster plan``): the partitions whose owner changes, the partitions whose replica
    set changes, warnings, and ``at_risk``: the partitions where a dead node being removed or
    replaced was a replica while another replica is down too."""
    moves = [{"partition": p, "from": a, "to": b} for p, a, b in ownership_moves(before.ring, after.ring)]
    changes = [{"partition": p, "gains": list(gained), "loses": list(lost)}
               for p, gained, lost in replica_changes(before.ring, after.ring, n)]
    plan: dict[str, Any] = {"change": change, "node": node, "ring_version": before.ring_version,
                            "moves": moves, "replica_changes": changes, "warnings": [], "at_risk": []}
    if replaces is not None:
        plan["replaces"] = replaces
    dead = replaces if change == "replace" else node if change == "remove" else None
    if dead is None:
        return plan
    risky = at_risk(before.ring, dead, n, is_up)
    plan["at_risk"] = [{"partition": p, "down": down} for p, down in sorted(risky.items())]
    if risky:
        down = sorted({x for nodes in risky.values() for x in nodes})
        plan["warnings"].append(
            f"{len(risky)} partitions have {dead} as a replica while other replicas ({', '.join(down)}) are down "
            f"too: a write acknowledged only by {dead} and those replicas is lost unless a fallback still holds it "
            f"(partitions {', '.join(str(p) for p in sorted(risky))})")
    plan["warnings"].append(f"{dead} is not read: a write that only {dead} acknowledged, and whose fallback copy "
                            "is also gone, is lost; the surviving replicas refill its partitions")
    return plan


def with_hint_counts(plan: dict[str, Any], hints: Mapping[str, int | None]) -> dict[str, Any]:
    """``plan`` with the keys live nodes hold as hints for its dead node (``hints``: per holder,
    None when it did not answer) counted in ``hints_for_dead`` and named in a warning."""
    dead = plan.get("replaces") if plan["change"] == "replace" else plan["node"]
    held = sum(count for count in hints.values() if count)
    unknown = sorted(holder for holder, count in hints.items() if count is None)
    warnings = list(plan["warnings"])
    target = plan["node"] if plan["change"] == "replace" else "the keys' current replicas"
    if held:
        warnings.append(f"{held} keys are held as hints for {dead} on live nodes: they go to {target} "
                        "(nothing is lost with them)")
    if unknown:
        warnings.append(f"hints held for {dead} unknown on {', '.join(unknown)} (did not answer)")
    return {**plan, "warnings": warnings, "hints_for_dead": held, "hints_unknown": unknown}


def accept_gossip(mine: ClusterState, theirs: ClusterState, me: str) -> ClusterState | None:
    """The state to keep after hearing ``theirs``, or None when it must be refused: another
    cluster's state is adopted only by a node alone in its own cluster that it lists as active."""
    if theirs.cluster == mine.cluster:
        return mine.merge(theirs)
    alone = [m.id for m in mine.active()] == [me]
    listed = theirs.status_of(me) in ACTIVE and theirs.members[me].peer == mine.members[me].peer
    return theirs if alone and listed else None


def state_to_wire(state: ClusterState) -> dict[str, Any]:
    """A state as msgpack-able data."""
    return {
        "members": [[m.id, m.peer, m.http, m.status, m.version] for m in state.members.values()],
        "ownership": list(state.ownership),
        "ring_version": state.ring_version,
        "ring_author": state.ring_author,
        "cluster": state.cluster,
        "progress": [[node, p.seq, p.ring_version, p.pending] for node, p in state.progress.items()],
        # A key of its own: nodes that predate replacements ignore it instead of refusing the state.
        "replaced": [[dead, new] for dead, new in sorted(state.replaced.items())],
    }


#: Bound on gossiped counters (versions, sequence numbers), far beyond any real use.
MAX_COUNTER = 2 ** 62


def _counter(value: Any) -> bool:
    return type(value) is int and 0 <= value < MAX_COUNTER


def _address(value: str) -> bool:
    try:
        split_host_port(value)
    except ValueError:
        return False
    return True


def state_from_wire(data: Any, partitions: int) -> ClusterState:
    """Inverse of ``state_to_wire``; raises ``MalformedState`` on anything else, including an
    ownership of the wrong size or naming an unknown member."""
    try:
        members = {}
        for member_id, peer, http, status, version in data["members"]:
            if not all(isinstance(x, str) for x in (member_id, peer, http)) or status not in STATUS_RANK \
                    or not _counter(version) or version < 1 or not _address(peer) or not _address(http):
                raise MalformedState(f"bad member entry {member_id!r}")
            members[member_id] = MemberEntry(member_id, peer, http, status, version)
        ownership = tuple(data["ownership"])
        ring_version, ring_author, cluster = data["ring_version"], data["ring_author"], data["cluster"]
        progress = {}
        for node, seq, seen, pending in data["progress"]:
            if not isinstance(node, str) or not all(_counter(x) for x in (seq, seen, pending)):
                raise MalformedState(f"bad progress entry {node!r}")
            progress[node] = Progress(seq, seen, pending)
        if len(ownership) != partitions or not all(isinstance(o, str) and o in members for o in ownership):
            raise MalformedState("ownership does not cover the partitions with known members")
        replaced = {}
        for dead, new in data.get("replaced", []):
            if dead not in members or new not in members:
                raise MalformedState(f"a replacement of unknown members {dead!r} -> {new!r}")
            replaced[dead] = new
    except MalformedState:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise MalformedState(f"not a cluster state: {exc}") from exc
    if not _counter(ring_version) or ring_version < 1 or not isinstance(ring_author, str):
        raise MalformedState("bad ring version")
    if not isinstance(cluster, str) or not cluster:
        raise MalformedState("no cluster name")
    return ClusterState(members=members, ownership=ownership, ring_version=ring_version, ring_author=ring_author,
                        cluster=cluster, progress=progress, replaced=replaced)
