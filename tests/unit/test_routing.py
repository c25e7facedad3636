"""Client-driven coordination's pure part: which node a routed client tries first for a key."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dynamod.core.ring import Ring
from dynamod.routing import RingView, key_bytes


def documents(members: list[str], partitions: int = 16, n: int = 3, down: frozenset[str] = frozenset()):
    """``/admin/ring`` and ``/admin/status`` as a node of this ring would answer them."""
    ring = Ring.initial(members, partitions)
    ring_document = {"node": members[0], "partitions": partitions, "n": n, "ownership": list(ring.ownership),
                     "preference_lists": [list(ring.preference_list_for_partition(p, n)) for p in range(partitions)]}
    status = {"node": members[0], "members": [
        {"id": m, "peer": f"127.0.0.1:{2000 + i}", "http": f"127.0.0.1:{3000 + i}",
         "status": "down" if m in down else "up"} for i, m in enumerate(members)]}
    return ring, ring_document, status


@given(st.binary(min_size=1, max_size=64), st.integers(min_value=3, max_value=7))
def test_the_view_routes_a_key_to_its_preference_list_first(key, size):
    members = [f"n{i}" for i in range(1, size + 1)]
    ring, ring_document, status = documents(members)
    view = RingView.from_documents(ring_document, status)
    assert view.replicas(key) == ring.preference_list(key, 3)
    candidates = view.candidates(key)
    assert candidates[:3] == list(ring.preference_list(key, 3)) and sorted(candidates) == sorted(members)


def test_replicas_seen_down_come_after_those_up_and_before_the_other_members():
    members = ["n1", "n2", "n3", "n4", "n5"]
    ring, ring_document, _ = documents(members)
    key = b"cart-17"
    first, second, third = ring.preference_list(key, 3)
    _, _, status = documents(members, down=frozenset({first}))
    candidates = RingView.from_documents(ring_document, status).candidates(key)
    assert candidates[:3] == [second, third, first]
    assert set(candidates[3:]) == set(members) - {first, second, third}


def test_a_text_key_routes_as_its_utf8_bytes():
    assert key_bytes("kø") == "kø".encode() and key_bytes(b"k") == b"k"


@pytest.mark.parametrize("change", [
    lambda ring, status: ring.pop("preference_lists"),
    lambda ring, status: ring.update(partitions=15),
    lambda ring, status: status["members"].pop(),
    lambda ring, status: status.update(members="n1"),
    lambda ring, status: ring.update(partitions="16"),
])
def test_documents_that_are_not_a_nodes_answer_are_refused(change):
    _, ring_document, status = documents(["n1", "n2", "n3"])
    change(ring_document, status)
    with pytest.raises(ValueError):
        RingView.from_documents(ring_document, status)
