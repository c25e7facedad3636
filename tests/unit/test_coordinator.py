"""Coordination in an in-process cluster: quorums, siblings, forwarding, failures and timeouts."""

from __future__ import annotations

import pytest

from dynamod.core.quorum import Outcome
from dynamod.core.versions import CausalContext, context_of, live_values
from tests.sim import fired, make_cluster


def put(network, node, key, value, context=None, w=2, deleted=False):
    return fired(network.nodes[node].put(key, value, context or CausalContext(), w, deleted=deleted))


def get(network, node, key, r=2):
    return fired(network.nodes[node].get(key, r))


def non_replica(network, key):
    replicas = network.nodes["n1"].replicas(key)
    return next(node for node in network.nodes if node not in replicas)


def test_put_on_one_node_reads_back_on_another():
    network, _ = make_cluster()
    assert put(network, "n1", b"k", b"v").result.outcome is Outcome.OK
    result = get(network, "n3", b"k")
    assert live_values(result.siblings) == [b"v"]


def test_blind_concurrent_puts_become_siblings_and_a_merged_put_resolves_them():
    network, _ = make_cluster()
    put(network, "n1", b"k", b"a")
    put(network, "n2", b"k", b"b")
    result = get(network, "n3", b"k")
    assert sorted(live_values(result.siblings)) == [b"a", b"b"]
    put(network, "n3", b"k", b"ab", context=context_of(result.siblings))
    assert live_values(get(network, "n1", b"k", r=3).siblings) == [b"ab"]


def test_a_non_replica_forwards_the_put_to_a_replica():
    network, _ = make_cluster(size=5)
    key = b"forwarded"
    outsider = non_replica(network, key)
    answer = put(network, outsider, key, b"v")
    assert answer.result.outcome is Outcome.OK
    assert any(op == "coordinate_put" for source, _, op in network.sent if source == outsider)
    assert not any(actor.startswith(outsider) for actor in answer.context.vector)


def test_forwarding_skips_an_unreachable_replica():
    network, _ = make_cluster(size=5)
    key = b"forwarded"
    outsider = non_replica(network, key)
    network.down.add(network.nodes["n1"].replicas(key)[0])
    assert put(network, outsider, key, b"v").result.outcome is Outcome.OK


def test_one_node_down_w2_succeeds_but_w3_and_r3_fail_with_counts():
    network, _ = make_cluster()
    network.down.add("n3")
    assert put(network, "n1", b"k", b"v", w=2).result.outcome is Outcome.OK
    failed = put(network, "n1", b"k", b"v", w=3).result
    # W=3 is known to be out of reach as soon as n3 fails, whether or not n2 has acked yet
    assert (failed.outcome, failed.needed) == (Outcome.FAILED, 3) and failed.acks in (1, 2)
    assert "n3" in failed.errors
    read = get(network, "n1", b"k", r=3)
    assert (read.outcome, read.needed) == (Outcome.FAILED, 3) and read.acks <= 2


def test_silent_replicas_time_out_on_the_clock():
    network, clock = make_cluster(timeout=1.0)
    network.silent.update({"n2", "n3"})
    pending = network.nodes["n1"].put(b"k", b"v", CausalContext(), 2)
    answers = []
    pending.addBoth(answers.append)
    clock.advance(0.99)
    assert not answers
    clock.advance(0.01)
    result = answers[0].result
    assert result.outcome is Outcome.FAILED and result.acks == 1
    assert all("Timeout" in reason for reason in result.errors.values())


def test_delete_is_a_versioned_tombstone():
    network, _ = make_cluster()
    put(network, "n1", b"k", b"v")
    context = context_of(get(network, "n2", b"k").siblings)
    put(network, "n2", b"k", b"", context=context, deleted=True)
    result = get(network, "n3", b"k", r=3)
    assert live_values(result.siblings) == []
    assert all(s.deleted for s in result.siblings)


def test_a_write_concurrent_with_a_delete_survives():
    network, _ = make_cluster()
    put(network, "n1", b"k", b"v")
    context = context_of(get(network, "n2", b"k").siblings)
    put(network, "n1", b"k", b"concurrent")
    put(network, "n2", b"k", b"", context=context, deleted=True)
    assert live_values(get(network, "n3", b"k", r=3).siblings) == [b"concurrent"]


def test_lww_mode_keeps_one_value():
    network, clock = make_cluster(lww=True)
    put(network, "n1", b"k", b"first")
    clock.advance(1)
    put(network, "n2", b"k", b"second")
    assert live_values(get(network, "n3", b"k", r=3).siblings) == [b"second"]


def test_a_corrupt_replica_record_is_reported_and_the_quorum_uses_the_others():
    network, _ = make_cluster()
    put(network, "n1", b"k", b"v", w=3)
    reports = []
    network.nodes["n1"].on_event = reports.append
    network.nodes["n2"].store.engine.data[b"k"] = b"\xc1not a record"
    failed = get(network, "n1", b"k", r=3)  # a corrupt reply is a failure, never "nothing stored"
    assert failed.outcome is Outcome.FAILED and "CorruptRecord" in failed.errors["n2"]
    assert reports[0] == "corrupt_record"
    # read repair gave n2 the reconciled versions, replacing what did not decode
    assert live_values(network.nodes["n2"].store.engine.read(b"k").siblings) == [b"v"]
    assert live_values(get(network, "n1", b"k", r=3).siblings) == [b"v"]


def test_read_repair_brings_a_replica_that_missed_a_write_up_to_date():
    network, _ = make_cluster()
    network.down.add("n3")
    put(network, "n1", b"k", b"v")
    network.down.clear()
    assert network.nodes["n3"].store.engine.read(b"k") is None
    events = []
    network.nodes["n2"].on_event = events.append
    assert live_values(get(network, "n2", b"k", r=2).siblings) == [b"v"]
    assert events == ["read_repair"]
    assert live_values(network.nodes["n3"].store.engine.read(b"k").siblings) == [b"v"]
    events.clear()
    get(network, "n2", b"k", r=3)
    assert events == []


def test_read_repair_removes_superseded_versions_from_a_stale_replica():
    network, _ = make_cluster()
    put(network, "n1", b"k", b"old", w=3)
    network.down.add("n3")
    context = context_of(get(network, "n1", b"k").siblings)
    put(network, "n1", b"k", b"new", context=context)
    network.down.clear()
    get(network, "n1", b"k", r=3)
    assert live_values(network.nodes["n3"].store.engine.read(b"k").siblings) == [b"new"]


def owners_and_spare(network, key):
    owners = network.nodes["n1"].replicas(key)
    spare = next(node for node in network.nodes["n1"].ring.walk(0) if node not in owners)
    return owners, spare


def test_with_an_owner_down_a_write_lands_on_a_fallback_that_hands_it_off_later():
    network, _ = make_cluster(size=5)
    key = b"sloppy"
    owners = network.nodes["n1"].replicas(key)
    down = owners[2]
    network.down.add(down)
    coordinator = owners[0]
    targets = network.nodes[coordinator].targets(key)
    [(fallback, hint)] = [(node, hint) for node, hint in targets.items() if hint is not None]
    assert hint == down and fallback not in owners
    answer = put(network, coordinator, key, b"v", w=3)
    assert answer.result.outcome is Outcome.OK  # W counts the fallback's ack
    held = network.nodes[fallback].store.engine.read(key)
    assert held.hints == {down} and network.nodes[fallback].store.hinted == {key: frozenset({down})}
    assert live_values(get(network, owners[1], key, r=3).siblings) == [b"v"]

    network.down.clear()
    assert fired(network.nodes[fallback].hand_off(key, down)) is True
    assert live_values(network.nodes[down].store.engine.read(key).siblings) == [b"v"]
    assert network.nodes[fallback].store.engine.read(key) is None
    assert network.nodes[fallback].store.hinted == {}


def test_a_handoff_that_fails_keeps_the_hint():
    network, _ = make_cluster(size=5)
    key = b"sloppy"
    owners = network.nodes["n1"].replicas(key)
    network.down.add(owners[2])
    put(network, owners[0], key, b"v", w=2)
    [fallback] = [n for n, h in network.nodes[owners[0]].targets(key).items() if h is not None]
    with pytest.raises(Exception, match="unreachable"):
        fired(network.nodes[fallback].hand_off(key, owners[2]))
    assert network.nodes[fallback].store.engine.read(key).hints == {owners[2]}


def test_too_few_live_nodes_still_answer_503():
    network, _ = make_cluster(size=3)
    network.down.update({"n2", "n3"})
    result = put(network, "n1", b"k", b"v", w=2).result
    assert result.outcome is Outcome.FAILED and result.needed == 2


def _bounded(network, warning: int, limit: int) -> list[str]:
    import attrs

    events: list[str] = []
    for coordinator in network.nodes.values():
        coordinator.settings = attrs.evolve(coordinator.settings, key_size_warning=warning, max_key_size=limit)
        coordinator.on_event = events.append
    return events


def test_a_write_growing_a_key_past_max_key_size_is_refused_with_no_effect_and_a_shrinking_one_taken():
    from dynamod.core.sizes import KeyTooLarge

    network, _ = make_cluster()
    events = _bounded(network, warning=2500, limit=4500)
    for _ in range(4):
        assert put(network, "n1", b"k", b"x" * 1000).result.outcome is Outcome.OK
    assert events.count("oversized_key_write") == 2  # the third and fourth writes passed the warning
    before = get(network, "n1", b"k", r=3)
    with pytest.raises(KeyTooLarge) as refused:
        put(network, "n2", b"k", b"x" * 1000)
    assert refused.value.limit == 4500 and refused.value.size > 4500
    assert get(network, "n1", b"k", r=3).siblings == before.siblings, "nothing was staged or sent"
    # A write that replaces the siblings it has seen shrinks the key: always taken.
    assert put(network, "n2", b"k", b"small", context=context_of(before.siblings)).result.outcome is Outcome.OK
    assert live_values(get(network, "n3", b"k", r=3).siblings) == [b"small"]


def test_a_write_leaving_an_oversized_key_no_larger_is_taken():
    """An operator lowered max_key_size below a key's size: a write that does not grow it passes."""
    network, _ = make_cluster()
    for _ in range(3):
        put(network, "n1", b"k", b"x" * 1000)
    _bounded(network, warning=100, limit=1500)
    seen = get(network, "n1", b"k", r=3)
    assert put(network, "n1", b"k", b"y" * 900, context=context_of(seen.siblings[:1])).result.outcome is Outcome.OK
