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
  resolved deterministically (the higher author wins) and the loser is re-planned by its caller.

Whether a member is *reachable* is not gossiped: each node decides that locally
(``dynamod.core.detector``). Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from dynamod.core.ring import Ring

JOINING, MEMBER, LEAVING, LEFT = "joining", "member", "leaving", "left"
STATUS_RANK = {JOINING: 0, MEMBER: 1, LEAVING: 2, LEFT: 3}


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
class ClusterState:
    """Members and partition ownership, each versioned for merging."""

    members: Mapping[str, MemberEntry]
    ownership: tuple[str, ...]
    ring_version: int = 1
    ring_author: str = ""

    @classmethod
    def initial(cls, members: list[MemberEntry], partitions: int, author: str = "") -> ClusterState:
        """A fresh cluster of ``members`` with round-robin ownership."""
        ring = Ring.initial([m.id for m in members], partitions)
        return cls(members={m.id: m for m in members}, ownership=ring.ownership, ring_version=1,
                   ring_author=author)

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
        return ClusterState(members=members, ownership=newer.ownership, ring_version=newer.ring_version,
                            ring_author=newer.ring_author)

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


def state_to_wire(state: ClusterState) -> dict[str, Any]:
    """A state as msgpack-able data."""
    return {
        "members": [[m.id, m.peer, m.http, m.status, m.version] for m in state.members.values()],
        "ownership": list(state.ownership),
        "ring_version": state.ring_version,
        "ring_author": state.ring_author,
    }


def state_from_wire(data: Any, partitions: int) -> ClusterState:
    """Inverse of ``state_to_wire``; raises ``MalformedState`` on anything else, including an
    ownership of the wrong size or naming an unknown member."""
    try:
        members = {}
        for member_id, peer, http, status, version in data["members"]:
            if not all(isinstance(x, str) for x in (member_id, peer, http)) or status not in STATUS_RANK \
                    or type(version) is not int or version < 1:
                raise MalformedState(f"bad member entry {member_id!r}")
            members[member_id] = MemberEntry(member_id, peer, http, status, version)
        ownership = tuple(data["ownership"])
        ring_version, ring_author = data["ring_version"], data["ring_author"]
    except MalformedState:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise MalformedState(f"not a cluster state: {exc}") from exc
    if len(ownership) != partitions or not all(owner in members for owner in ownership):
        raise MalformedState("ownership does not cover the partitions with known members")
    if type(ring_version) is not int or ring_version < 1 or not isinstance(ring_author, str):
        raise MalformedState("bad ring version")
    return ClusterState(members=members, ownership=ownership, ring_version=ring_version, ring_author=ring_author)
