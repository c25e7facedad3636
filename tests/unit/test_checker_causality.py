"""The causality checker: version graphs built from supersedes, and the anomalies found in them."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from dynacheck.checkers import causality
from dynacheck.synthetic import HistoryBuilder, generate, version

TEST = {"workload": "cart", "n": 3, "nodes": ["n1", "n2", "n3"]}
A1, A2, A3, B1 = ("a", 1), ("a", 2), ("a", 3), ("b", 1)


def final_read(h: HistoryBuilder, key: str, versions: list[dict], at_ms: float = 1000) -> None:
    elements = sorted({e for v in versions for e in v["elements"]})
    for i, node in enumerate(("n1", "n2", "n3")):
        h.read(10 + i, key, elements, at_ms + i, at_ms + i + 0.5, versions=versions, final=True, node=node)


def chain() -> HistoryBuilder:
    """k: a/1 {1}, then a/2 {1,2} superseding it, then a/3 {1,2,3} superseding a/2; a/3 is final."""
    h = HistoryBuilder()
    h.add(0, "k", 1, 0, 2, dot=A1)
    h.read(1, "k", [1], 3, 4, versions=[version(A1, [1])])
    h.add(0, "k", 2, 5, 7, dot=A2, seen=[A1], supersedes=[A1])
    h.add(1, "k", 3, 8, 10, dot=A3, seen=[A1, A2], supersedes=[A2])
    final_read(h, "k", [version(A3, [1, 2, 3], seen=[A1, A2])])
    return h


def anomalies(result: dict) -> dict:
    return {kind: result[f"{kind}_count"] for kind in causality.KINDS if result[f"{kind}_count"]}


def test_a_chain_of_supersedes_ending_in_the_final_sibling_is_valid():
    result = causality.check(TEST, chain().history(), None)
    assert result["valid"] is True
    assert anomalies(result) == {}
    assert (result["versions"], result["acked_versions"], result["edges"]) == (3, 3, 2)
    json.dumps(result)


def test_the_version_graph_has_an_edge_from_each_superseded_version():
    graph = causality.version_graph(chain().history(), "k")
    assert sorted(graph.edges) == [("a/1", "a/2"), ("a/2", "a/3")]
    assert graph.nodes["a/3"]["final"] and graph.nodes["a/3"]["acked"]
    assert graph.nodes["a/1"]["elements"] == [1]  # from the read that returned it
    assert not graph.nodes["a/1"]["final"]


def test_concurrent_siblings_both_final_are_valid():
    h = HistoryBuilder()
    h.add(0, "k", 1, 0, 2, dot=A1)
    h.add(1, "k", 2, 1, 3, dot=B1)  # blind: concurrent with a/1
    final_read(h, "k", [version(A1, [1]), version(B1, [2])])
    result = causality.check(TEST, h.history(), None)
    assert result["valid"] is True
    assert result["max_final_siblings"] == 2


def test_two_versions_superseding_each_other_form_a_cycle():
    h = HistoryBuilder()
    h.add(0, "k", 1, 0, 2, dot=A1, seen=[B1], supersedes=[B1])
    h.add(1, "k", 2, 1, 3, dot=B1, seen=[A1], supersedes=[A1])
    final_read(h, "k", [version(A1, [1, 2], seen=[B1])])
    result = causality.check(TEST, h.history(), None)
    assert result["valid"] is False
    assert result["cycles_count"] == 1
    assert result["cycles"][0]["via"] == "supersedes"
    assert sorted(result["cycles"][0]["cycle"]) == ["a/1", "b/1"]


def test_a_write_superseding_its_own_dot_is_a_cycle():
    h = HistoryBuilder()
    h.add(0, "k", 1, 0, 2, dot=A1)
    h.add(1, "k", 2, 3, 5, dot=A1, supersedes=[A1])  # the dot was issued again
    final_read(h, "k", [version(A1, [1, 2])])
    result = causality.check(TEST, h.history(), None)
    assert result["cycles_count"] == 1
    assert result["cycles"][0]["cycle"] == ["a/1"]
    assert result["reused_dots_count"] == 1  # two acknowledged writes reported the same dot
    assert result["reused_dots"][0]["writes"] == [1, 2]


def test_one_dot_seen_with_different_elements_is_a_reused_dot():
    h = HistoryBuilder()
    h.add(0, "k", 1, 0, 2, dot=A1)
    h.read(1, "k", [1], 3, 4, versions=[version(A1, [1])])
    h.read(2, "k", [9], 5, 6, versions=[version(A1, [9])])  # kv679: another write got dot a/1
    final_read(h, "k", [version(A1, [1])])
    result = causality.check(TEST, h.history(), None)
    assert result["valid"] is False
    assert result["reused_dots"] == [{"key": "k", "dot": "a/1", "element_sets": 2, "sizes": [1, 1]}]


def test_a_clock_at_the_context_bound_may_have_truncated_what_it_superseded():
    # The node keeps at most max_context_entries entries: a clock of that size may forget by design.
    full = {"vector": {f"x{i}": 1 for i in range(3)}, "cloud": [["b", 1]]}
    for bound, expected in ((4, "truncated"), (5, "context_lost")):
        h = HistoryBuilder()
        h.add(0, "k", 1, 0, 2, dot=A1)
        h.add(1, "k", 2, 3, 5, dot=B1, supersedes=[A1], clock=full, read_clock=[(f"x{i}", 1) for i in range(3)])
        final_read(h, "k", [version(B1, [1, 2], seen=[A1])])
        result = causality.check({**TEST, "max_context_entries": bound}, h.history(), None)
        if expected == "truncated":  # neither the lost context nor the version it dropped is judged
            assert result["context_lost_count"] == result["dropped_count"] == 0
            assert result["truncated_count"] == 2 and result["valid"] is True
        else:
            assert result["context_lost_count"] == result["dropped_count"] == 1
            assert result["truncated_count"] == 0 and result["valid"] is False


def test_a_write_whose_clock_lacks_what_it_superseded_lost_its_context():
    h = HistoryBuilder()
    h.add(0, "k", 1, 0, 2, dot=A1)
    h.add(1, "k", 2, 3, 5, dot=B1, supersedes=[A1])  # its clock holds only b/1
    final_read(h, "k", [version(B1, [1, 2], seen=[A1])])
    result = causality.check(TEST, h.history(), None)
    assert result["valid"] is False
    assert result["context_lost"] == [{"key": "k", "superseded": "a/1", "by": "b/1"}]


def test_an_acknowledged_version_no_final_sibling_has_seen_was_dropped():
    h = HistoryBuilder()
    h.add(0, "k", 1, 0, 2, dot=A1)
    h.add(1, "k", 2, 1, 3, dot=B1)  # concurrent sibling, acknowledged
    final_read(h, "k", [version(A1, [1])])  # b/1 vanished without a descendant that saw it
    result = causality.check(TEST, h.history(), None)
    assert result["valid"] is False
    assert result["dropped_count"] == 1
    assert result["dropped"][0]["dot"] == "b/1"
    assert result["dropped"][0]["final_siblings"] == ["a/1"]


def test_a_version_superseded_by_a_write_whose_answer_was_lost_is_not_dropped():
    h = HistoryBuilder()
    h.add(0, "k", 1, 0, 2, dot=A1)
    h.add(1, "k", 2, 3, 50, outcome="info")  # wrote b/1 superseding a/1, but the answer was lost
    final_read(h, "k", [version(B1, [1, 2], seen=[A1])])
    result = causality.check(TEST, h.history(), None)
    assert result["valid"] is True
    assert result["edges"] == 0  # no supersedes known: descent came from the final sibling's clock


def test_versions_a_delete_of_unknown_outcome_superseded_may_have_been_reaped_with_it():
    # Found by ``dynacheck sim`` (seed 143): a cold cart's last remove was a DELETE answered 503;
    # it had been applied, the nodes reaped the key, and the final reads found nothing at all.
    def history(delete_outcome: str) -> list:
        h = HistoryBuilder()
        h.add(0, "k", 1, 0, 2, dot=A1)
        h.remove(1, "k", 1, 3, 5, outcome=delete_outcome, delete=True, seen=[A1], dot=None)
        final_read(h, "k", [])
        return h.history()

    unknown = causality.check(TEST, history("info"), None)
    assert unknown["valid"] is True and unknown["reaped_count"] == 1 and unknown["dropped_count"] == 0
    failed = causality.check(TEST, history("fail"), None)  # certainly not applied: a/1 was lost
    assert failed["valid"] is False and failed["dropped_count"] == 1


def test_a_final_sibling_another_version_has_seen_is_not_maximal():
    h = HistoryBuilder()
    h.add(0, "k", 1, 0, 2, dot=A1)
    h.add(1, "k", 2, 3, 5, dot=A2, seen=[A1], supersedes=[A1])
    # The superseded a/1 came back beside its descendant.
    final_read(h, "k", [version(A1, [1]), version(A2, [1, 2], seen=[A1])])
    result = causality.check(TEST, h.history(), None)
    assert result["valid"] is False
    assert result["not_maximal"] == [{"key": "k", "final": "a/1", "seen_by": "a/2"}]


def test_a_key_without_final_reads_cannot_be_judged():
    h = HistoryBuilder()
    h.add(0, "k", 1, 0, 2, dot=A1)
    h.add(1, "k", 2, 1, 3, dot=B1)
    result = causality.check(TEST, h.history(), None)
    assert result["valid"] == "unknown"
    assert result["unjudged_keys"] == ["k"]
    assert result["dropped_count"] == 0


def test_a_history_without_versions_is_unknown():
    assert causality.check(TEST, [], None)["valid"] == "unknown"


def test_interesting_keys_put_anomalies_first_then_siblings_then_size():
    h = chain()  # "k": three versions, one final sibling
    h.add(6, "big", 10, 0, 2, dot=A1)
    for counter in range(2, 6):
        h.add(6, "big", 10 + counter, counter * 10, counter * 10 + 1, dot=("a", counter),
              seen=[("a", c) for c in range(1, counter)], supersedes=[("a", counter - 1)])
    final_read(h, "big", [version(("a", 5), [10, 12, 13, 14, 15], seen=[("a", c) for c in range(1, 5)])],
               at_ms=4000)
    h.add(2, "siblings", 20, 0, 2, dot=A1)
    h.add(3, "siblings", 21, 0, 2, dot=B1)
    final_read(h, "siblings", [version(A1, [20]), version(B1, [21])], at_ms=2000)
    h.add(4, "bad", 30, 0, 2, dot=A1)
    h.add(5, "bad", 31, 0, 2, dot=B1)
    final_read(h, "bad", [version(A1, [30])], at_ms=3000)
    per_key = causality.analyse(h.history())
    for kv in per_key.values():
        kv.find_anomalies()
    assert causality.interesting_keys(per_key, 3) == ["bad", "siblings", "big"]


@settings(max_examples=15)
@given(seed=st.integers(0, 10_000), partitions=st.integers(0, 3))
def test_a_correct_simulated_store_has_no_causal_anomaly(seed, partitions):
    test, history = generate(400, seed=seed, partitions=partitions, active_keys=3, key_limit=60)
    result = causality.check(test, history, None)
    assert result["valid"] is True, anomalies(result)
    assert result["edges"] > 0


@settings(max_examples=10)
@given(seed=st.integers(0, 10_000), pick=st.integers(0, 10**6))
def test_forgetting_a_superseded_dot_in_a_write_context_is_caught(seed, pick):
    test, history = generate(300, seed=seed, active_keys=3, key_limit=60)
    writes = [op for op in history if op.get("f") == "add" and op["type"] == "ok"
              and any(tuple(s) != tuple(op["version"]["dot"]) for s in op["supersedes"])]
    op = writes[pick % len(writes)]
    # The version's clock keeps only its own dot: the context the write read was lost.
    op["version"] = {"dot": op["version"]["dot"], "clock": {"vector": {}, "cloud": [op["version"]["dot"]]}}
    result = causality.check(test, history, None)
    assert result["valid"] is False
    assert result["context_lost_count"] >= 1


def test_blind_register_writes_all_surviving_as_siblings_are_valid():
    h = HistoryBuilder()
    dots = [(f"n{i % 3}", i // 3 + 1) for i in range(300)]
    for i, dot in enumerate(dots):
        h.add(i % 5, "reg", i, i * 2, i * 2 + 1, dot=dot, f="write")  # no context: supersedes nothing
    final_read(h, "reg", [version(dot, [i]) for i, dot in enumerate(dots)])
    result = causality.check({"workload": "register"}, h.history(), None)
    assert result["valid"] is True
    assert result["max_final_siblings"] == 300


def test_a_final_sibling_held_in_another_versions_cloud_is_not_maximal():
    h = HistoryBuilder()
    h.add(0, "k", 1, 0, 2, dot=("a", 5))
    h.add(1, "k", 2, 3, 5, dot=B1, seen=[("a", 5)], supersedes=[("a", 5)])  # b/1's clock: cloud [a, 5]
    final_read(h, "k", [version(("a", 5), [1]), version(B1, [1, 2], seen=[("a", 5)])])
    result = causality.check(TEST, h.history(), None)
    assert result["not_maximal"] == [{"key": "k", "final": "a/5", "seen_by": "b/1"}]


def test_a_version_whose_clock_holds_its_own_descendant_is_a_cycle():
    h = HistoryBuilder()
    h.add(0, "k", 1, 0, 2, dot=A1, seen=[B1])  # claims to have seen b/1, written only later
    h.add(1, "k", 2, 3, 5, dot=B1, seen=[A1], supersedes=[A1])
    final_read(h, "k", [version(B1, [1, 2], seen=[A1])])
    result = causality.check(TEST, h.history(), None)
    assert result["cycles"] == [{"key": "k", "via": "clocks", "cycle": ["a/1", "b/1"]}]


# -- over_claimed: a write's clock may claim only what its read returned, and its own dot --------------


def test_a_clock_claiming_a_dot_the_read_never_returned_is_over_claimed():
    h = HistoryBuilder()
    h.add(0, "k", 1, 0, 2, dot=A1)
    h.add(1, "k", 2, 3, 5, dot=A2, seen=[A1], supersedes=[A1])
    # A plain vector clock {a: 4} for the dot a/4 on a context of {a: 2}: it claims a/3, never read.
    h.add(0, "k", 3, 6, 8, dot=("a", 4), supersedes=[A2], read_clock=[A1, A2], clock={"vector": {"a": 4}, "cloud": []})
    final_read(h, "k", [version(("a", 4), [1, 2, 3], seen=[A1, A2, A3])])
    result = causality.check(TEST, h.history(), None)
    assert result["valid"] is False
    assert anomalies(result) == {"over_claimed": 1}
    assert result["over_claimed"] == [{"key": "k", "dot": "a/4", "unread_count": 1, "unread": ["a/3"],
                                       "acked_ms": 8.0}]


def test_a_cloud_dot_the_read_never_returned_is_over_claimed():
    h = HistoryBuilder()
    h.add(0, "k", 1, 0, 2, dot=A1)
    h.add(1, "k", 2, 3, 5, dot=B1, seen=[A1, ("c", 7)], supersedes=[A1], read_clock=[A1])
    final_read(h, "k", [version(B1, [1, 2], seen=[A1, ("c", 7)])])
    result = causality.check(TEST, h.history(), None)
    assert [(entry["dot"], entry["unread"]) for entry in result["over_claimed"]] == [("b/1", ["c/7"])]
    per_key = causality.analyse(h.history())
    per_key["k"].find_anomalies()
    assert ("b", 1) in per_key["k"].anomalous  # drawn as an anomaly in the graphs


def test_correct_claims_are_not_over_claimed():
    h = HistoryBuilder()
    # Blind writes: nothing read, the clock holds the own dot only (in the vector or the cloud).
    h.add(0, "reg", 1, 0, 2, dot=A1, f="write")
    h.add(1, "reg", 2, 0, 2, dot=("b", 5), f="write", clock={"vector": {}, "cloud": [["b", 5]]})
    final_read(h, "reg", [version(A1, [1]), version(("b", 5), [2])])
    # A read-modify-write of two siblings, one a DVV cloud dot: it claims both and its own dot.
    h.add(2, "k", 1, 0, 2, dot=A1)
    h.add(3, "k", 2, 0, 2, dot=("b", 3), seen=[("b", 1)])
    h.add(2, "k", 3, 3, 5, dot=A2, seen=[A1, ("b", 1), ("b", 3)], supersedes=[A1, ("b", 3)])
    # A truncated context claims less than was read: never an over-claim.
    h.add(3, "k", 4, 6, 8, dot=A3, seen=[A1, A2, ("b", 3)], supersedes=[A2],
          read_clock=[A1, A2, ("b", 1), ("b", 3)])  # forgot b/1
    final_read(h, "k", [version(A3, [1, 2, 3, 4], seen=[A1, A2, ("b", 3)])], at_ms=2000)
    result = causality.check(TEST, h.history(), None)
    assert result["valid"] is True, anomalies(result)


def test_writes_without_read_clock_are_not_judged_for_claims():
    h = HistoryBuilder()
    h.add(0, "k", 1, 0, 2, dot=("a", 4), clock={"vector": {"a": 4}, "cloud": []}, legacy=True)
    final_read(h, "k", [version(("a", 4), [1], seen=[A1, A2, A3])])
    assert causality.check(TEST, h.history(), None)["over_claimed_count"] == 0


def test_over_claims_counts_a_long_vector_jump_without_walking_it():
    count, sample = causality.over_claims({"vector": {"a": 1_000_000}, "cloud": []}, ("a", 1_000_000),
                                          {"vector": {"a": 10}, "cloud": [["a", 12]]})
    assert count == 1_000_000 - 10 - 2
    assert sample == [("a", 11)] + [("a", n) for n in range(13, 22)]
    assert causality.over_claims({"vector": {"a": 3}, "cloud": [["b", 2]]}, ("b", 2), {"vector": {"a": 3}}) == (0, [])


@settings(max_examples=10)
@given(seed=st.integers(0, 10_000), pick=st.integers(0, 10**6))
def test_a_simulated_write_claiming_an_unread_dot_is_caught(seed, pick):
    test, history = generate(300, seed=seed, active_keys=3, key_limit=60)
    writes = [op for op in history if op.get("f") == "add" and op["type"] == "ok"]
    op = writes[pick % len(writes)]
    clock = op["version"]["clock"]
    op["version"] = {**op["version"], "clock": {**clock, "cloud": [*clock["cloud"], ["ghost", 1]]}}
    result = causality.check(test, history, None)
    assert result["valid"] is False
    assert [entry["unread"] for entry in result["over_claimed"]] == [["ghost/1"]]
