"""Merkle trees for anti-entropy (Dynamo §4.7): find the keys two replicas disagree on cheaply.

One tree per partition. Keys fall into ``2**depth`` leaf buckets by a hash of the key; a leaf's
hash is the XOR of ``H(key, digest)`` over its keys, so a write updates the tree in O(depth)
(XOR the old entry out and the new one in) without rescanning the bucket; inner nodes hash their
two children. Two replicas compare roots, then descend only into differing subtrees; the keys of
the differing leaves are the ones to exchange. A record's digest names its sibling set (dots and
tombstone flags), so equal sets give equal digests whatever order they arrived in.

Pure: no I/O, no clock. The exchange over the network is the anti-entropy service's job.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping

import msgpack

from dynamod.core.ring import key_hash
from dynamod.core.versions import Sibling

DEFAULT_DEPTH = 10
_EMPTY = b"\x00" * 16


def record_digest(siblings: Iterable[Sibling]) -> bytes:
    """16 bytes naming a sibling set: its dots and tombstone flags, in dot order."""
    return hashlib.md5(msgpack.packb(sorted((s.dot[0], s.dot[1], s.deleted) for s in siblings))).digest()


def leaf_of(key: bytes, depth: int) -> int:
    """The leaf bucket of ``key``: the low bits of its MD5, independent of the partition (which
    the high bits choose)."""
    return leaf_of_hash(key_hash(key), depth)


def leaf_of_hash(hashed: int, depth: int) -> int:
    """``leaf_of`` for a key whose ``key_hash`` is already known."""
    return hashed & ((1 << depth) - 1)


def _entry(key: bytes, digest: bytes) -> int:
    return int.from_bytes(hashlib.md5(len(key).to_bytes(4, "big") + key + digest).digest(), "big")


class MerkleTree:
    """A fixed-depth hash tree over (key, digest) pairs."""

    __slots__ = ("depth", "_leaves", "_levels", "_dirty")

    def __init__(self, depth: int = DEFAULT_DEPTH):
        if not 1 <= depth <= 24:
            raise ValueError("depth must be between 1 and 24")
        self.depth = depth
        self._leaves = [0] * (1 << depth)
        self._levels: list[list[bytes]] | None = None
        #: Leaves changed since ``_levels`` was computed (only their paths to the root are redone).
        self._dirty: set[int] = set()

    @classmethod
    def build(cls, items: Mapping[bytes, bytes], depth: int = DEFAULT_DEPTH) -> MerkleTree:
        """A tree over ``{key: digest}``."""
        tree = cls(depth)
        for key, digest in items.items():
            tree.update(key, None, digest)
        return tree

    def update(self, key: bytes, old_digest: bytes | None, new_digest: bytes | None,
               leaf: int | None = None) -> None:
        """Replace the key's entry (None: absent) in O(1); inner hashes are recomputed lazily.
        ``leaf`` may be passed when the caller already knows it."""
        if old_digest == new_digest:
            return
        if leaf is None:
            leaf = leaf_of(key, self.depth)
        if old_digest is not None:
            self._leaves[leaf] ^= _entry(key, old_digest)
        if new_digest is not None:
            self._leaves[leaf] ^= _entry(key, new_digest)
        self._dirty.add(leaf)

    def levels(self) -> list[list[bytes]]:
        """Hashes level by level: ``levels()[0]`` is ``[root]``, the last level the leaves. A list
        returned before an update is never changed by it (an exchange may still be walking it)."""
        if self._levels is None:
            level = [leaf.to_bytes(16, "big") for leaf in self._leaves]
            levels = [level]
            while len(level) > 1:
                level = [_EMPTY if a == b == _EMPTY else hashlib.md5(a + b).digest()
                         for a, b in zip(level[0::2], level[1::2], strict=True)]
                levels.append(level)
            levels.reverse()
            self._levels = levels
            self._dirty.clear()
        elif self._dirty:
            # Only the changed leaves' paths: a write used to cost the whole tree (2**depth leaf
            # conversions and as many MD5s) at the next exchange of its partition.
            levels = [list(row) for row in self._levels]
            changed = self._dirty
            leaves = levels[-1]
            for leaf in changed:
                leaves[leaf] = self._leaves[leaf].to_bytes(16, "big")
            for depth in range(self.depth - 1, -1, -1):
                children, row = levels[depth + 1], levels[depth]
                changed = {index >> 1 for index in changed}
                for index in changed:
                    a, b = children[2 * index], children[2 * index + 1]
                    row[index] = _EMPTY if a == b == _EMPTY else hashlib.md5(a + b).digest()
            self._levels = levels
            self._dirty = set()
        return self._levels

    def root(self) -> bytes:
        """The root hash: equal roots mean equal contents (up to hash collisions)."""
        return self.levels()[0][0]

    def hashes(self, level: int, indices: Iterable[int]) -> dict[int, bytes]:
        """The hashes at ``level`` for ``indices`` (what one replica sends the other)."""
        row = self.levels()[level]
        return {index: row[index] for index in indices}


def differing_children(level: int, mine: Mapping[int, bytes], theirs: Mapping[int, bytes]) -> list[int]:
    """Given two replicas' hashes for some nodes at ``level``, the indices at ``level + 1`` to
    compare next: the children of every node whose hashes differ."""
    return [child for index in sorted(mine) if mine[index] != theirs.get(index)
            for child in (2 * index, 2 * index + 1)]


def differing_leaves(a: MerkleTree, b: MerkleTree) -> list[int]:
    """Leaves whose contents differ, found by descending only into differing subtrees (the same
    walk two nodes make over the network, one level per round trip)."""
    if a.depth != b.depth:
        raise ValueError("trees of different depths cannot be compared")
    frontier = [0]
    for level in range(a.depth):
        frontier = differing_children(level, a.hashes(level, frontier), b.hashes(level, frontier))
        if not frontier:
            return []
    leaves_a, leaves_b = a.hashes(a.depth, frontier), b.hashes(b.depth, frontier)
    return [leaf for leaf in frontier if leaves_a[leaf] != leaves_b[leaf]]


def keys_in_leaves(keys: Iterable[bytes], leaves: Iterable[int], depth: int) -> list[bytes]:
    """The keys (of one replica's partition) that fall into ``leaves``."""
    wanted = set(leaves)
    return [key for key in keys if leaf_of(key, depth) in wanted]
