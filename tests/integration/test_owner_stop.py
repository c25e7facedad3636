"""A clean stop of one owner of a key must not cost a write: the stopping node says goodbye, its
peers route around it at once, and a PUT whose target fails falls over to a fallback (issue 13)."""

from __future__ import annotations

import threading

import pytest

from dynamod.client import ClientError, DynamoClient
from dynamod.core.ring import Ring
from dynamod.polling import wait_until

pytestmark = pytest.mark.integration

STOPPED = "n4"


def keys_with(ring: Ring, owner: str, count: int, prefix: str) -> list[bytes]:
    """``count`` keys whose preference list (N=3) includes ``owner``."""
    found, i = [], 0
    while len(found) < count:
        key = f"{prefix}-{i}".encode()
        if owner in ring.preference_list(key, 3):
            found.append(key)
        i += 1
    return found


def writes_around(ring: Ring, nodes: list[str], prefix: str) -> list[tuple[str, bytes, bytes]]:
    """(node, key, value) for 4 keys that ``STOPPED`` owns: half through a surviving owner (it
    coordinates), half through a node that is not an owner (it forwards to a coordinator in the
    preference list)."""
    writes = []
    for i, key in enumerate(keys_with(ring, STOPPED, 4, prefix)):
        owners = ring.preference_list(key, 3)
        via = [n for n in owners if n != STOPPED][0] if i % 2 else next(n for n in nodes if n not in owners)
        writes.append((via, key, b"value-%d" % i))
    return writes


def put_all(writes: list[tuple[str, bytes, bytes]], addresses: dict[str, str]) -> dict[bytes, str]:
    """PUT every (node, key, value) at W=3 at the same time; returns the failures by key."""
    failures: dict[bytes, str] = {}

    def put(node: str, key: bytes, value: bytes) -> None:
        client = DynamoClient(addresses[node], timeout=10)
        try:
            client.put(key, value, w=3)
        except ClientError as exc:
            failures[key] = f"via {node}: {exc} {getattr(exc, 'body', '')}"
        finally:
            client.close()

    threads = [threading.Thread(target=put, args=write) for write in writes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return failures


def test_puts_at_w3_right_after_an_owner_stops_are_taken_by_a_fallback_and_handed_back(make_cluster):
    cluster = make_cluster(nodes=5, n=3, r=2, w=3, handoff_interval=0.3)
    ring = Ring(cluster.client("n1").ring()["ownership"])
    addresses = {node: cluster.cluster.node(node).http for node in cluster.ids}
    writes = writes_around(ring, cluster.ids, "owner-stop")

    assert cluster.cluster.stop(cluster.cluster.node(STOPPED)) == "stopped"
    failures = put_all(writes, addresses)
    assert not failures, f"PUTs at W=3 refused with four nodes up: {failures}"

    for node in cluster.ids:
        if node != STOPPED:  # the goodbye reached every peer before the process exited
            members = {m["id"]: m["status"] for m in cluster.client(node).status()["members"]}
            assert members[STOPPED] == "down", f"{node} still sees {STOPPED} {members[STOPPED]}"
    for _via, key, value in writes:
        owners = ring.preference_list(key, 3)
        holders = [n for n in cluster.ids if n not in owners and cluster.client(n).replica(key) is not None]
        assert holders, f"no fallback holds {key!r} for {STOPPED}"
        assert all(cluster.client(n).status()["hinted_keys"] >= 1 for n in holders)
        assert cluster.client(owners[0] if owners[0] != STOPPED else owners[1]).get(key, r=3).siblings == [value]

    cluster.start(STOPPED)  # every node sees it up again: the goodbye does not outlive the restart
    returned = DynamoClient(addresses[STOPPED], timeout=10)
    assert wait_until(lambda: all(returned.replica(key) is not None for _, key, _ in writes), 30.0, interval=0.1), \
        "the hinted copies were never handed back to the restarted owner"
    assert wait_until(lambda: sum(cluster.client(n).status()["hinted_keys"] for n in cluster.ids) == 0, 30.0,
                      interval=0.1), "hints were kept after the owner acknowledged them"
    for _via, key, value in writes:
        assert returned.get(key, r=3).siblings == [value]


def test_puts_at_w3_right_after_an_owner_is_killed_fall_over_to_a_fallback(make_cluster):
    """No goodbye here: the lost connections mark the owner down, and a PUT that reaches it
    before that falls over to the next node."""
    cluster = make_cluster(nodes=5, n=3, r=2, w=3)
    ring = Ring(cluster.client("n1").ring()["ownership"])
    addresses = {node: cluster.cluster.node(node).http for node in cluster.ids}
    writes = writes_around(ring, cluster.ids, "owner-kill")
    assert cluster.cluster.kill(cluster.cluster.node(STOPPED)) == "killed"
    failures = put_all(writes, addresses)
    assert not failures, f"PUTs at W=3 refused with four nodes up: {failures}"
    for _via, key, _value in writes:
        owners = ring.preference_list(key, 3)
        assert any(cluster.client(n).replica(key) is not None for n in cluster.ids if n not in owners)
