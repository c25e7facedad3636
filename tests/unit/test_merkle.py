"""Merkle trees: the diff finds exactly the keys two replicas disagree on."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from dynamod.core.merkle import (
    MerkleTree,
    differing_leaves,
    keys_in_leaves,
    leaf_of,
    record_digest,
)
from dynamod.core.versions import CausalContext, Sibling

keys = st.binary(min_size=1, max_size=12)
digests = st.binary(min_size=16, max_size=16)
contents = st.dictionaries(keys, digests, max_size=60)


@given(contents, contents, st.integers(1, 8))
def test_diff_finds_exactly_the_differing_keys(a, b, depth):
    tree_a, tree_b = MerkleTree.build(a, depth), MerkleTree.build(b, depth)
    differing = {k for k in set(a) | set(b) if a.get(k) != b.get(k)}
    leaves = differing_leaves(tree_a, tree_b)
    assert {leaf_of(k, depth) for k in differing} == set(leaves)
    candidates = set(keys_in_leaves(set(a) | set(b), leaves, depth))
    assert differing <= candidates
    assert (tree_a.root() == tree_b.root()) == (not differing)


@given(contents, st.lists(st.tuples(keys, st.none() | digests), max_size=30))
def test_incremental_updates_match_a_rebuild(start, changes):
    tree = MerkleTree.build(start, 6)
    current = dict(start)
    for key, digest in changes:
        tree.update(key, current.get(key), digest)
        if digest is None:
            current.pop(key, None)
        else:
            current[key] = digest
    assert tree.levels() == MerkleTree.build(current, 6).levels()


def test_an_empty_tree_equals_another_empty_tree():
    assert MerkleTree(4).root() == MerkleTree(4).root()
    assert differing_leaves(MerkleTree(4), MerkleTree(4)) == []


def test_record_digest_ignores_arrival_order_but_not_tombstones():
    a = Sibling(dot=("x", 1), past=CausalContext(), value=b"1")
    b = Sibling(dot=("y", 1), past=CausalContext(), value=b"2")
    deleted = Sibling(dot=("y", 1), past=CausalContext(), value=b"", deleted=True)
    assert record_digest([a, b]) == record_digest([b, a])
    assert record_digest([a, b]) != record_digest([a, deleted])
    assert record_digest([a]) != record_digest([a, b])


@given(contents, st.lists(st.tuples(keys, st.none() | digests, st.booleans()), max_size=30), st.integers(1, 8))
def test_hashes_recomputed_along_the_changed_paths_match_a_rebuild_and_leave_earlier_levels_alone(
        start, changes, depth):
    tree = MerkleTree.build(start, depth)
    current = dict(start)
    for key, digest, look in changes:
        before = tree.levels()
        frozen = [list(row) for row in before]
        tree.update(key, current.get(key), digest)
        if digest is None:
            current.pop(key, None)
        else:
            current[key] = digest
        if look:  # levels between updates: the next ones are recomputed from these
            assert tree.levels() == MerkleTree.build(current, depth).levels()
        assert before == frozen  # what an exchange in progress walks does not change under it
    assert tree.levels() == MerkleTree.build(current, depth).levels()
