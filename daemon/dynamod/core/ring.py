"""Partitioning (Dynamo §4.2 and §6.2, strategy 3): Q equal-size partitions of the MD5 space.

The hash space is cut into Q equal partitions; MD5 of the key picks one. Ownership assigns every
partition to a node; a key's preference list is the owner of its partition followed by the owners
of the next partitions clockwise, skipping nodes already listed, until N distinct nodes are found.
Ownership is explicit data (not derived from node names), so membership changes move exactly the
partitions the claim algorithm chooses. Pure: no I/O, no clock.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Sequence


def key_hash(key: bytes) -> int:
    """The 128-bit MD5 position of a key on the ring."""
    return int.from_bytes(hashlib.md5(key).digest(), "big")


def partition_of(key: bytes, partitions: int) -> int:
    """The partition (0..Q-1) that holds ``key``: equal slices of the 2^128 hash space."""
    return partition_of_hash(key_hash(key), partitions)


def partition_of_hash(hashed: int, partitions: int) -> int:
    """``partition_of`` for a key whose ``key_hash`` is already known."""
    return (hashed * partitions) >> 128


class Ring:
    """Partition ownership: ``ownership[p]`` is the node that owns partition ``p``."""

    __slots__ = ("ownership", "partitions", "_preference_cache", "_walk_cache")

    def __init__(self, ownership: Sequence[str]):
        if not ownership:
            raise ValueError("a ring needs at least one partition")
        self.ownership: tuple[str, ...] = tuple(ownership)
        self.partitions = len(self.ownership)
        self._preference_cache: dict[tuple[int, int], tuple[str, ...]] = {}
        self._walk_cache: dict[int, tuple[str, ...]] = {}

    @classmethod
    def initial(cls, members: Sequence[str], partitions: int) -> Ring:
        """Spread Q partitions round-robin over the members in sorted order: every node within one
        partition of even, and any N consecutive partitions held by N distinct nodes."""
        if partitions < 1:
            raise ValueError("partitions must be at least 1")
        ordered = sorted(set(members))
        if not ordered:
            raise ValueError("a ring needs at least one member")
        return cls([ordered[p % len(ordered)] for p in range(partitions)])

    @property
    def members(self) -> tuple[str, ...]:
        """Nodes owning at least one partition, sorted."""
        return tuple(sorted(set(self.ownership)))

    def partitions_of(self, node: str) -> list[int]:
        """Partitions owned by ``node``."""
        return [p for p, owner in enumerate(self.ownership) if owner == node]

    def preference_list_for_partition(self, partition: int, n: int) -> tuple[str, ...]:
        """The first ``n`` distinct owners walking clockwise from ``partition`` (fewer when the
        ring has fewer members)."""
        cached = self._preference_cache.get((partition, n))
        if cached is not None:
            return cached
        found: list[str] = []
        for step in range(self.partitions):
            owner = self.ownership[(partition + step) % self.partitions]
            if owner not in found:
                found.append(owner)
                if len(found) == n:
                    break
        result = tuple(found)
        self._preference_cache[(partition, n)] = result
        return result

    def preference_list(self, key: bytes, n: int) -> tuple[str, ...]:
        """The nodes responsible for ``key``, coordinator candidates first."""
        return self.preference_list_for_partition(partition_of(key, self.partitions), n)

    def walk(self, partition: int) -> tuple[str, ...]:
        """Every member once, in the order met walking clockwise from ``partition``."""
        cached = self._walk_cache.get(partition)
        if cached is None:
            found: dict[str, None] = {}
            for step in range(self.partitions):
                found.setdefault(self.ownership[(partition + step) % self.partitions], None)
            cached = self._walk_cache[partition] = tuple(found)
        return cached

    def sloppy_targets(self, key: bytes, n: int, is_up: Callable[[str], bool]) -> list[tuple[str, str | None]]:
        """Dynamo §4.6 sloppy quorum: the key's first N distinct owners that are up, and for each
        owner that is down the next node up beyond them on the ring, carrying that owner as its
        hint: ``[(node, None), ..., (fallback, owner_it_stands_in_for), ...]``. Fewer than N when
        too few nodes are up."""
        return self.sloppy_targets_for_partition(partition_of(key, self.partitions), n, is_up)

    def sloppy_targets_for_partition(self, partition: int, n: int,
                                     is_up: Callable[[str], bool]) -> list[tuple[str, str | None]]:
        """``sloppy_targets`` of the keys of ``partition``."""
        order = self.walk(partition)
        primaries, spares = order[:n], [node for node in order[n:] if is_up(node)]
        targets: list[tuple[str, str | None]] = [(node, None) for node in primaries if is_up(node)]
        for owner in primaries:
            if not is_up(owner) and spares:
                targets.append((spares.pop(0), owner))
        return targets

    def claim(self, node: str, n: int) -> Ring:
        """Ownership after ``node`` joins: it takes floor(Q/M) partitions, each from a node that
        currently owns the most, choosing partitions far (at least ``n`` apart where possible) from
        the ones it already took so its preference lists stay distinct. Only the partitions it
        takes change owner."""
        if node in self.ownership:
            return self
        ownership = list(self.ownership)
        members = len(set(ownership)) + 1
        counts = Counter(ownership)
        taken: list[int] = []
        for _ in range(self.partitions // members):
            richest = max(counts.values())
            candidates = [p for p, owner in enumerate(ownership)
                          if owner != node and counts[owner] == richest]
            best = max(candidates, key=lambda p: (self._spacing(p, taken, n), -p))
            counts[ownership[best]] -= 1
            ownership[best] = node
            counts[node] += 1
            taken.append(best)
        return Ring(ownership)

    def release(self, node: str, n: int) -> Ring:
        """Ownership after ``node`` leaves: each of its partitions goes to a remaining node that
        owns the fewest, preferring one whose own partitions are far from it (so preference lists
        stay distinct). Only the leaving node's partitions change owner."""
        remaining = sorted(set(self.ownership) - {node})
        if not remaining:
            raise ValueError("the last member cannot leave")
        if node not in self.ownership:
            return self
        ownership = list(self.ownership)
        counts = Counter(owner for owner in ownership if owner != node)
        for member in remaining:
            counts.setdefault(member, 0)
        for partition in self.partitions_of(node):
            poorest = min(counts.values())
            candidates = [member for member in remaining if counts[member] == poorest]
            best = max(candidates, key=lambda member: (
                self._spacing(partition, [p for p, o in enumerate(ownership) if o == member], n), member))
            ownership[partition] = best
            counts[best] += 1
        return Ring(ownership)

    def rename(self, old: str, new: str) -> Ring:
        """Ownership after ``new`` replaces ``old``: exactly ``old``'s partitions change owner, to
        ``new``, so every preference list keeps its shape (Riak's force-replace)."""
        if new in self.ownership and new != old:
            raise ValueError(f"{new} already owns partitions")
        return Ring([new if owner == old else owner for owner in self.ownership])

    def _spacing(self, partition: int, taken: list[int], n: int) -> int:
        """Distance from ``partition`` to the nearest of ``taken`` (capped at ``n``), so choices
        that keep N consecutive partitions distinct score highest."""
        if not taken:
            return n
        q = self.partitions
        nearest = min(min((partition - t) % q, (t - partition) % q) for t in taken)
        return min(nearest, n)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Ring) and other.ownership == self.ownership

    def __hash__(self) -> int:
        return hash(self.ownership)

    def __repr__(self) -> str:
        return f"Ring(partitions={self.partitions}, members={list(self.members)})"


def ownership_moves(before: Ring, after: Ring) -> list[tuple[int, str, str]]:
    """``(partition, from, to)`` for every partition whose owner differs between two rings."""
    return [(p, a, b) for p, (a, b) in enumerate(zip(before.ownership, after.ownership, strict=True)) if a != b]


def replica_changes(before: Ring, after: Ring, n: int) -> list[tuple[int, tuple[str, ...], tuple[str, ...]]]:
    """``(partition, replicas gained, replicas lost)`` for every partition whose preference list
    differs: what data actually moves (a gained replica is filled by transfers or anti-entropy)."""
    changes = []
    for p in range(before.partitions):
        old, new = before.preference_list_for_partition(p, n), after.preference_list_for_partition(p, n)
        if old != new:
            changes.append((p, tuple(x for x in new if x not in old), tuple(x for x in old if x not in new)))
    return changes
