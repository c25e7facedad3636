"""Tombstone removal on an in-process cluster (3 nodes, N=3) driven on a fake clock."""

from __future__ import annotations

import pytest

from dynamod.core.merkle import record_digest
from dynamod.core.quorum import Outcome
from dynamod.core.versions import CausalContext, Sibling, context_of, live_values
from dynamod.net.operations import BadRequest
from dynamod.tombstones import TombstoneReaper
from tests.sim import fired, make_cluster

GRACE = 10.0


def cluster(settled=lambda: True, admit=lambda cost: True, batch=100, size=3):
    network, clock = make_cluster(size=size, n=3)
    reapers = {node: TombstoneReaper(coordinator, clock, interval=1.0, grace=GRACE, settled=settled,
                                     admit=admit, batch=batch)
               for node, coordinator in network.nodes.items()}
    return network, clock, reapers


def keys_first_owned_by(network, first, count=1, prefix=b"key"):
    found = []
    for i in range(10_000):
        key = b"%s-%d" % (prefix, i)
        if network.nodes["n1"].replicas(key)[0] == first:
            found.append(key)
            if len(found) == count:
                return found
    raise AssertionError("no key found")


def record_on(network, node, key):
    return fired(network.nodes[node].store.get(key))


def held_by(network, key):
    return {node for node in network.nodes if record_on(network, node, key) is not None}


def is_tombstone_only(record):
    return record is not None and record.siblings and all(s.deleted for s in record.siblings)


def write_then_delete(network, key, via, w=3):
    """Write a value, read it back and delete it with the read's context: only a tombstone is left."""
    coordinator = network.nodes[via]
    assert fired(coordinator.put(key, b"value", CausalContext(), w)).result.outcome is Outcome.OK
    read = fired(coordinator.get(key, w))
    assert live_values(read.siblings) == [b"value"]
    answer = fired(coordinator.put(key, b"", context_of(read.siblings), w, deleted=True))
    assert answer.result.outcome is Outcome.OK


def test_a_deleted_key_is_reaped_everywhere_only_after_two_checks_a_grace_apart():
    network, clock, reapers = cluster()
    [key] = keys_first_owned_by(network, "n1")
    write_then_delete(network, key, via="n1")
    assert all(is_tombstone_only(record_on(network, node, key)) for node in network.nodes)
    assert all(key in reaper.candidates for reaper in reapers.values())
    reaper = reapers["n1"]

    clock.advance(5 * GRACE)  # a long wait before the first check does not count: the grace starts there
    reaper.round()
    assert reaper.confirmed[key][1] == clock.seconds()
    assert held_by(network, key) == {"n1", "n2", "n3"}

    clock.advance(GRACE - 0.5)
    reaper.round()  # second check, too early
    assert held_by(network, key) == {"n1", "n2", "n3"}
    assert reaper.stats == {"reaped": 0, "checks": 2}

    clock.advance(0.5)
    reaper.round()
    assert held_by(network, key) == set()
    assert reaper.stats == {"reaped": 1, "checks": 3}
    assert all(key not in r.candidates and key not in r.confirmed for r in reapers.values())
    assert [op for _, target, op in network.sent if op == "reap"] == ["reap", "reap"]
    assert {target for _, target, op in network.sent if op == "reap"} == {"n2", "n3"}


def test_a_key_another_member_still_holds_a_superseded_version_of_waits_until_that_copy_is_gone():
    # Found by dynacheck sim (seed 128): a former owner held a version the delete superseded, for
    # a transfer to an owner it could not reach; reaped meanwhile, the key came back with it.
    network, clock, reapers = cluster(size=4)
    [key] = keys_first_owned_by(network, "n1")
    owners = network.nodes["n1"].replicas(key)
    [former] = set(network.nodes) - set(owners)
    coordinator = network.nodes["n1"]
    assert fired(coordinator.put(key, b"value", CausalContext(), 3)).result.outcome is Outcome.OK
    live = record_on(network, owners[0], key)
    fired(network.nodes[former].store.update(key, lambda record, allocate: (live, None)))
    read = fired(coordinator.get(key, 3))
    assert fired(coordinator.put(key, b"", context_of(read.siblings), 3, deleted=True)).result.outcome is Outcome.OK
    reaper = reapers["n1"]
    for _ in range(3):
        reaper.round()
        clock.advance(GRACE)
    assert held_by(network, key) == {*owners, former} and reaper.stats["reaped"] == 0
    fired(network.nodes[former].store.update(key, lambda record, allocate: (None, None)))  # handed off
    for _ in range(3):
        reaper.round()
        clock.advance(GRACE)
    assert held_by(network, key) == set() and reaper.stats["reaped"] == 1


@pytest.mark.parametrize("stale_holds", ["nothing", "the live value"])
def test_a_key_one_replica_lacks_the_tombstone_of_is_never_reaped(stale_holds):
    network, clock, reapers = cluster()
    [key] = keys_first_owned_by(network, "n1")
    stale = network.nodes["n1"].replicas(key)[2]
    if stale_holds == "nothing":
        network.down.add(stale)
        write_then_delete(network, key, via="n1", w=2)
    else:
        fired(network.nodes["n1"].put(key, b"value", CausalContext(), 3))
        network.down.add(stale)
        read = fired(network.nodes["n1"].get(key, 2))
        fired(network.nodes["n1"].put(key, b"", context_of(read.siblings), 2, deleted=True))
    network.down.clear()
    before = record_on(network, stale, key)
    assert (before is None) if stale_holds == "nothing" else live_values(before.siblings) == [b"value"]

    reaper = reapers["n1"]
    for _ in range(4):
        reaper.round()
        clock.advance(GRACE)
    assert reaper.stats == {"reaped": 0, "checks": 4}
    assert key not in reaper.confirmed
    others = set(network.nodes) - {stale}
    assert all(is_tombstone_only(record_on(network, node, key)) for node in others)
    assert record_on(network, stale, key) == before
    assert not any(op == "reap" for _, _, op in network.sent)

    # once a full read repairs the stale replica, the key becomes reapable: the test above can fail
    fired(network.nodes["n1"].get(key, 3))
    assert is_tombstone_only(record_on(network, stale, key))
    reaper.round()
    clock.advance(GRACE)
    reaper.round()
    assert held_by(network, key) == set()


def test_a_key_with_a_live_sibling_is_not_a_candidate():
    network, clock, reapers = cluster()
    [key] = keys_first_owned_by(network, "n1")
    write_then_delete(network, key, via="n1")
    reapers["n1"].round()
    assert key in reapers["n1"].confirmed

    # a concurrent (blind) write: the tombstone and the new value are siblings
    fired(network.nodes["n2"].put(key, b"concurrent", CausalContext(), 3))
    siblings = record_on(network, "n1", key).siblings
    assert sorted(s.deleted for s in siblings) == [False, True]
    assert all(key not in reaper.candidates for reaper in reapers.values())
    assert key not in reapers["n1"].confirmed
    assert reapers["n1"]._mine() == []

    for _ in range(3):
        clock.advance(GRACE)
        reapers["n1"].round()
    assert reapers["n1"].stats["checks"] == 1  # only the check made before the write
    for node in network.nodes:
        assert record_on(network, node, key).siblings == siblings


def test_nothing_is_reaped_while_the_cluster_is_not_settled():
    settled = [False]
    network, clock, reapers = cluster(settled=lambda: settled[0])
    [key] = keys_first_owned_by(network, "n1")
    write_then_delete(network, key, via="n1")
    reaper = reapers["n1"]
    for _ in range(3):
        reaper.round()
        clock.advance(GRACE)
    assert reaper.stats["checks"] == 0 and not reaper.confirmed
    assert held_by(network, key) == {"n1", "n2", "n3"}

    settled[0] = True
    reaper.round()
    assert key in reaper.confirmed
    settled[0] = False  # e.g. a join started during the grace period
    clock.advance(2 * GRACE)
    reaper.round()
    assert held_by(network, key) == {"n1", "n2", "n3"} and reaper.stats["checks"] == 1

    settled[0] = True
    reaper.round()
    assert held_by(network, key) == set()


@pytest.mark.parametrize("late_version", ["concurrent tombstone", "new value"])
def test_a_write_between_confirmation_and_reap_keeps_that_replicas_record(late_version):
    network, clock, reapers = cluster()
    [key] = keys_first_owned_by(network, "n1")
    write_then_delete(network, key, via="n1")
    late = network.nodes["n1"].replicas(key)[1]
    tombstones = record_on(network, "n1", key).siblings
    if late_version == "concurrent tombstone":
        arriving = Sibling(dot=("elsewhere~1.1", 1), past=CausalContext(), value=b"", deleted=True)
    else:
        arriving = Sibling(dot=("elsewhere~1.1", 1), past=context_of(tombstones), value=b"back")

    reaper = reapers["n1"]
    reaper.round()
    clock.advance(GRACE)
    deliver = network.deliver

    def write_lands_first(source, target, op, payload, timeout):
        if op == "reap" and target == late:  # after the second check, before the reap reaches it
            coordinator = network.nodes[late]
            fired(coordinator.store.update(key, coordinator.merge_update((arriving,), None)))
        return deliver(source, target, op, payload, timeout)

    network.deliver = write_lands_first
    reaper.round()
    network.deliver = deliver

    assert held_by(network, key) == {late}
    kept = record_on(network, late, key).siblings
    assert arriving in kept
    assert record_digest(kept) != record_digest(tombstones)
    assert reaper.stats["reaped"] == 1  # its own copy; the late replica refused
    assert (key in reapers[late].candidates) == (late_version == "concurrent tombstone")

    if late_version == "concurrent tombstone":
        # the key is reconsidered once the surviving tombstones are back on every owner
        fired(network.nodes["n1"].get(key, 3))  # read repair
        assert held_by(network, key) == {"n1", "n2", "n3"}
        reaper.round()
        clock.advance(GRACE)
        reaper.round()
        assert held_by(network, key) == set()
    else:
        assert live_values(fired(network.nodes["n1"].get(key, 3)).siblings) == [b"back"]


def test_the_reap_handler_refuses_a_digest_that_does_not_match():
    network, _, _ = cluster()
    [key] = keys_first_owned_by(network, "n1")
    write_then_delete(network, key, via="n1")
    node = network.nodes["n2"]
    digest = record_digest(record_on(network, "n2", key).siblings)
    assert fired(node.handle_peer_request("reap", [key, b"\x00" * 16])) is False
    assert is_tombstone_only(record_on(network, "n2", key))
    with pytest.raises(BadRequest, match="digest: expected bytes"):
        node.handle_peer_request("reap", [key, "not bytes"])
    assert fired(node.handle_peer_request("reap", [key, digest])) is True
    assert record_on(network, "n2", key) is None
    assert record_on(network, "n1", key) is not None  # the handler acts on its own node only

    # a live record is never dropped, even named by its own digest
    fired(network.nodes["n1"].put(b"alive", b"v", CausalContext(), 3))
    live_digest = record_digest(record_on(network, "n2", b"alive").siblings)
    assert fired(node.handle_peer_request("reap", [b"alive", live_digest])) is False
    assert live_values(record_on(network, "n2", b"alive").siblings) == [b"v"]


def test_only_the_first_owner_of_a_key_acts_on_it():
    network, clock, reapers = cluster()
    keys = [key for node in ("n1", "n2", "n3") for key in keys_first_owned_by(network, node, count=3)]
    for key in keys:
        write_then_delete(network, key, via="n1")
    for node, reaper in reapers.items():
        assert reaper.candidates == set(keys)
        assert sorted(reaper._mine()) == sorted(k for k in keys if network.nodes[node].replicas(k)[0] == node)
        assert len(reaper._mine()) == 3

    mine_n1 = set(reapers["n1"]._mine())
    sent_before = len(network.sent)
    reapers["n2"].round()
    reapers["n3"].round()
    sent = network.sent[sent_before:]
    # each reaper read its own 3 keys from the 2 other owners, and nothing else
    assert sorted(sent) == sorted((source, target, "get") for source in ("n2", "n3") for target in network.nodes
                                  if target != source for _ in range(3))
    assert set(reapers["n2"].confirmed) == set(reapers["n2"]._mine())
    assert not mine_n1 & (set(reapers["n2"].confirmed) | set(reapers["n3"].confirmed))
    clock.advance(GRACE)
    reapers["n2"].round()
    reapers["n3"].round()
    for key in keys:
        assert held_by(network, key) == (set() if key not in mine_n1 else {"n1", "n2", "n3"})
    assert reapers["n1"].stats["checks"] == 0


def test_admission_control_defers_the_work():
    allowed, costs = [False], []

    def admit(cost):
        costs.append(cost)
        return allowed[0]

    network, clock, reapers = cluster(admit=admit, batch=2)
    keys = keys_first_owned_by(network, "n1", count=3)
    for key in keys:
        write_then_delete(network, key, via="n1")
    reaper = reapers["n1"]
    sent_before = len(network.sent)
    for _ in range(3):
        reaper.round()
        clock.advance(GRACE)
    assert costs == [2, 2, 2]  # one batch asked for each round, never started
    assert reaper.stats["checks"] == 0 and not reaper.confirmed
    assert len(network.sent) == sent_before
    assert all(held_by(network, key) == {"n1", "n2", "n3"} for key in keys)

    allowed[0] = True
    reaper.round()
    clock.advance(GRACE)
    reaper.round()
    assert reaper.stats == {"reaped": 2, "checks": 4}


def test_report_counts_candidates_checks_and_reaps():
    network, clock, reapers = cluster(batch=2)
    keys = sorted(keys_first_owned_by(network, "n1", count=3))
    for key in keys:
        write_then_delete(network, key, via="n1")
    fired(network.nodes["n1"].put(b"live", b"v", CausalContext(), 3))
    reaper = reapers["n1"]
    assert reaper.report() == {"tombstones": 3, "awaiting_grace": 0, "reaped": 0, "checks": 0}
    reaper.round()
    assert reaper.report() == {"tombstones": 3, "awaiting_grace": 2, "reaped": 0, "checks": 2}
    clock.advance(GRACE)
    reaper.round()
    assert reaper.report() == {"tombstones": 1, "awaiting_grace": 0, "reaped": 2, "checks": 4}
    assert [k for k in keys if held_by(network, k)] == keys[2:]
    reaper.round()
    clock.advance(GRACE)
    reaper.round()
    assert reaper.report() == {"tombstones": 0, "awaiting_grace": 0, "reaped": 3, "checks": 6}
    # the other owners saw their copies go through the reap handler
    assert reapers["n2"].report() == {"tombstones": 0, "awaiting_grace": 0, "reaped": 0, "checks": 0}
    assert held_by(network, b"live") == {"n1", "n2", "n3"}
