"""The siblings checker (Jepsen's set-full over Dynamo siblings) on hand-written and simulated histories."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from dynacheck.checkers import siblings
from dynacheck.synthetic import HistoryBuilder, generate

CART = {"workload": "cart", "mode": "vclock", "n": 3, "nodes": ["n1", "n2", "n3"]}


def final_reads(history: HistoryBuilder, key: str, elements: list[int], at_ms: float,
                nodes: tuple[str, ...] = ("n1", "n2", "n3")) -> None:
    """One final read per node, all returning ``elements``."""
    for i, node in enumerate(nodes):
        history.read(10 + i, key, elements, at_ms + i, at_ms + i + 0.5, final=True, node=node)


def check(history: HistoryBuilder) -> dict:
    return siblings.check(CART, history.history(), None)


def test_every_acknowledged_element_in_the_final_reads_is_valid():
    h = HistoryBuilder()
    h.add(0, "cart", 1, 0, 2)
    h.add(1, "cart", 2, 1, 3)
    h.read(0, "cart", [1, 2], 5, 6)
    final_reads(h, "cart", [1, 2], 100)
    result = check(h)
    assert result["valid"] is True
    assert result["acknowledged_count"] == 2
    assert result["lost_count"] == result["unexpected_count"] == result["stale_count"] == 0
    json.dumps(result)  # stored as results.json


def test_an_acknowledged_element_missing_from_one_final_read_is_lost():
    h = HistoryBuilder()
    h.add(0, "cart", 1, 0, 2)
    h.add(1, "cart", 2, 1, 3)
    h.read(0, "cart", [1, 2], 5, 6)
    h.read(10, "cart", [1, 2], 100, 101, final=True, node="n1")
    h.read(11, "cart", [1], 102, 103, final=True, node="n2")
    result = check(h)
    assert result["valid"] is False
    assert result["lost_count"] == 1
    lost = result["lost"][0]
    assert (lost["key"], lost["element"]) == ("cart", 2)
    assert lost["missing_from_final_reads_on"] == ["n2"]
    assert lost["last_seen_ms"] == 100  # the n1 final read still had it
    assert result["lost_by_key"] == {"cart": 1}


def test_an_element_whose_add_failed_yet_is_read_is_unexpected():
    h = HistoryBuilder()
    h.add(0, "cart", 1, 0, 2, outcome="fail")
    h.read(1, "cart", [1], 5, 6)
    final_reads(h, "cart", [1], 100)
    result = check(h)
    assert result["valid"] is False
    assert result["unexpected_count"] == 1
    assert result["unexpected"][0] == {"key": "cart", "element": 1, "outcome": "fail", "first_read_ms": 5.0}


def test_an_element_never_attempted_on_that_key_is_unexpected():
    h = HistoryBuilder()
    h.add(0, "cart", 1, 0, 2)
    h.add(0, "other", 7, 3, 4)
    final_reads(h, "cart", [1, 7], 100)  # 7 belongs to another key
    final_reads(h, "other", [7], 110)
    result = check(h)
    assert result["valid"] is False
    assert [(u["key"], u["element"], u["outcome"]) for u in result["unexpected"]] == [
        ("cart", 7, "never attempted")]


def test_a_read_after_the_ack_missing_the_element_is_stale_but_valid():
    h = HistoryBuilder()
    h.add(0, "cart", 1, 0, 2)
    h.read(1, "cart", [], 10, 11)   # invoked after the ack, yet misses it: stale
    h.read(1, "cart", [1], 20, 21)
    final_reads(h, "cart", [1], 100)
    result = check(h)
    assert result["valid"] is True
    assert result["stale_count"] == 1
    assert result["stale"][0] == {"key": "cart", "element": 1, "add_ok_ms": 2.0, "last_missing_read_ms": 10.0,
                                  "stable_ms": 20.0}
    # Stable from the add's invocation (0 ms) to the first read after the last one missing it (20 ms).
    assert result["stable_latencies"] == {"0": 20.0, "0.5": 20.0, "0.95": 20.0, "0.99": 20.0, "1": 20.0}


def test_a_read_concurrent_with_the_add_may_miss_it_without_being_stale():
    h = HistoryBuilder()
    h.add(0, "cart", 1, 0, 10)
    h.read(1, "cart", [], 5, 6)     # invoked before the add completed
    h.read(1, "cart", [1], 20, 21)
    final_reads(h, "cart", [1], 100)
    result = check(h)
    assert result["valid"] is True
    assert result["stale_count"] == 0
    assert result["stable_latencies"]["1"] == 20.0


def test_an_element_seen_from_the_first_read_after_its_invocation_is_stable_at_once():
    h = HistoryBuilder()
    h.read(1, "cart", [], 0, 1)     # before the add was invoked: says nothing about it
    h.add(0, "cart", 1, 2, 10)
    h.read(1, "cart", [1], 6, 7)
    final_reads(h, "cart", [1], 100)
    assert check(h)["stable_latencies"]["0"] == 4.0  # from the add's invocation to the read at 6 ms


def test_elements_of_adds_with_unknown_outcome_that_are_read_are_recovered():
    h = HistoryBuilder()
    h.add(0, "cart", 1, 0, 50, outcome="info")
    h.add(1, "cart", 2, 1)           # never completed
    h.add(2, "cart", 3, 2, 60, outcome="info")  # never seen: neither recovered nor lost
    final_reads(h, "cart", [1, 2], 100)
    result = check(h)
    assert result["valid"] == "unknown"  # nothing acknowledged: nothing was promised
    assert result["info_count"] == 3
    assert sorted((r["element"], r["outcome"]) for r in result["recovered"]) == [(1, "info"), (2, "no completion")]
    assert result["recovered_count"] == 2


def test_acknowledged_elements_of_a_key_without_final_reads_are_never_read_and_unknown():
    h = HistoryBuilder()
    h.add(0, "cart", 1, 0, 2)
    h.add(0, "unread", 2, 3, 4)
    h.read(1, "unread", [2], 5, 6)  # not a final read
    final_reads(h, "cart", [1], 100)
    h.read(12, "unread", [], 110, 111, final=True, outcome="fail")
    result = check(h)
    assert result["valid"] == "unknown"
    assert result["never_read_count"] == 1
    assert result["never_read"][0]["key"] == "unread"


def test_a_lost_element_beats_never_read_and_makes_the_history_invalid():
    h = HistoryBuilder()
    h.add(0, "cart", 1, 0, 2)
    h.add(0, "unread", 2, 3, 4)
    final_reads(h, "cart", [], 100)
    assert check(h)["valid"] is False


def test_an_empty_history_is_unknown():
    assert siblings.check(CART, [], None)["valid"] == "unknown"


def test_register_writes_are_checked_like_adds():
    h = HistoryBuilder()
    h.add(0, "reg", 1, 0, 2, f="write")
    h.add(1, "reg", 2, 1, 3, f="write")
    final_reads(h, "reg", [2], 100)  # last-write-wins dropped 1: a lost acknowledged write
    result = siblings.check({"workload": "register", "mode": "lww"}, h.history(), None)
    assert result["valid"] is False
    assert [lost["element"] for lost in result["lost"]] == [1]


def test_samples_are_bounded_but_counts_are_not():
    h = HistoryBuilder()
    for element in range(120):
        h.add(0, "cart", element, element * 2, element * 2 + 1)
    final_reads(h, "cart", list(range(50)), 1000)
    result = check(h)
    assert result["lost_count"] == 70
    assert len(result["lost"]) == siblings.SAMPLE
    assert result["lost_latencies"]["0"] >= 0


def test_quantiles_use_nearest_rank():
    assert siblings.quantiles([]) == {}
    assert siblings.quantiles([5.0, 1.0, 3.0]) == {"0": 1.0, "0.5": 3.0, "0.95": 5.0, "0.99": 5.0, "1": 5.0}


@settings(max_examples=15)
@given(seed=st.integers(0, 10_000), partitions=st.integers(0, 3))
def test_a_correct_simulated_store_always_passes(seed, partitions):
    test, history = generate(400, seed=seed, partitions=partitions, active_keys=3, key_limit=60)
    result = siblings.check(test, history, None)
    assert result["valid"] is True, result
    assert result["lost_count"] == result["unexpected_count"] == 0


@settings(max_examples=15)
@given(seed=st.integers(0, 10_000), pick=st.integers(0, 10**6))
def test_deleting_an_acknowledged_element_from_a_final_read_makes_it_lost(seed, pick):
    test, history = generate(300, seed=seed, active_keys=3, key_limit=60)
    finals = [op for op in history if op.get("final") and op["type"] == "ok" and op["value"]]
    acked = {(op["key"], op["value"]) for op in history if op.get("f") == "add" and op["type"] == "ok"}
    candidates = [(op, element) for op in finals for element in op["value"] if (op["key"], element) in acked]
    op, element = candidates[pick % len(candidates)]
    op["value"] = [e for e in op["value"] if e != element]
    result = siblings.check(test, history, None)
    assert result["valid"] is False
    assert {(lost["key"], lost["element"]) for lost in result["lost"]} == {(op["key"], element)}
    assert result["lost"][0]["missing_from_final_reads_on"] == [op["node"]]
