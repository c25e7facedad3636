"""Cart removes and deletes, the mixed workload and the context-truncation option: the workloads' ops,
the client's remove, and the siblings and causality rules on hand-written histories."""

from __future__ import annotations

import json
import random

import attrs
import pytest

from dynacheck.checkers import causality, siblings
from dynacheck.client import Client
from dynacheck.db import local_cluster
from dynacheck.history import FAIL, OK
from dynacheck.runner import Options, node_config
from dynacheck.synthetic import HistoryBuilder, clock_json, clock_of, version
from dynacheck.workloads import COLD_FILL, COLD_SPAN, workload
from dynactl.deploy import render_node_toml
from dynamod.client import GetResult, WriteResult
from dynamod.core.encoding import encode_context
from dynamod.core.versions import CausalContext

CART = {"workload": "cart", "mode": "vclock", "n": 3, "nodes": ["n1", "n2", "n3"], "max_context_entries": 64}
A, B = "n1~1.1", "n2~1.1"


# -- workloads ------------------------------------------------------------------------------------

def ops(name: str, count: int = 4000, **options) -> list[dict]:
    made = workload(name, 3, **options).make
    rng = random.Random(1)
    return [made(rng, n) for n in range(count)]


def test_the_cart_adds_removes_and_reads_its_hot_keys_and_empties_its_cold_ones():
    made = ops("cart")
    hot = [op for op in made if "-cold-" not in op["key"]]
    assert {op["f"] for op in hot} == {"add", "remove", "read"}
    removes = [op for op in hot if op["f"] == "remove"]
    adds = [op for op in hot if op["f"] == "add"]
    assert 0.6 < len(removes) / len(adds) < 1.0  # a little under the adds: carts stay small
    assert all(op["value"] is None and isinstance(op["pick"], int) for op in removes)
    cold = [op for op in made if "-cold-" in op["key"]]
    assert {op["f"] for op in cold} == {"write", "remove"}  # blind writes fill it, removes empty it
    assert {op["f"] for op in ops("cart", blind_cold=False) if "-cold-" in op["key"]} == {"add", "remove"}


def test_cold_removes_come_only_in_the_last_part_of_a_span():
    made = workload("cart", 3).make
    rng = random.Random(2)
    positions = []
    for n in range(20_000):
        op = made(rng, n)
        if "-cold-" in op["key"]:
            positions.append((n % COLD_SPAN, op["f"]))
    assert all(p >= COLD_SPAN * COLD_FILL for p, f in positions if f == "remove")
    assert all(p < COLD_SPAN * COLD_FILL for p, f in positions if f != "remove")


def test_no_removes_when_their_fraction_is_zero():
    assert "remove" not in {op["f"] for op in ops("cart", remove_fraction=0)}


def test_mixed_interleaves_adds_and_blind_writes_on_the_same_keys():
    hot = [op for op in ops("mixed") if "-cold-" not in op["key"]]
    for key in ("mixed-0", "mixed-1", "mixed-2"):
        assert {op["f"] for op in hot if op["key"] == key} == {"add", "write", "read"}
    assert len({op["value"] for op in hot if op["f"] != "read"}) == sum(op["f"] != "read" for op in hot)


def test_an_unknown_workload_is_refused():
    with pytest.raises(ValueError, match="unknown workload"):
        workload("queue", 3)


# -- the client's remove --------------------------------------------------------------------------

def ctx(vector: dict[str, int]) -> str:
    return encode_context(CausalContext.of(vector))


class FakeNode:
    """A node that answers one GET and records the writes sent to it."""

    def __init__(self, read: GetResult):
        self.answer, self.writes = read, []

    def get(self, key):
        return self.answer

    def write(self, key, value, context=None, w=None):
        self.writes.append(("PUT", key, value, context))
        return WriteResult(ctx({A: 3, B: 2}), (A, 3))

    def delete(self, key, context=None, w=None):
        self.writes.append(("DELETE", key, b"", context))
        return WriteResult(ctx({A: 3, B: 2}), (A, 3))


def client_with(read: GetResult) -> tuple[Client, FakeNode]:
    client = Client({"n1": "127.0.0.1:1"}, "n1")
    node = client.connections["n1"] = FakeNode(read)
    return client, node


def sibling_doc(dot, vector):
    return {"dot": list(dot), "vector": vector, "cloud": []}


def test_a_remove_drops_an_item_its_read_returned_and_writes_the_rest_with_the_context():
    read = GetResult(True, ctx({A: 2, B: 2}), [b"1,2", b"3"],
                     [sibling_doc((A, 2), {A: 2}), sibling_doc((B, 2), {B: 2})])
    client, node = client_with(read)
    done = client({"f": "remove", "key": "cart-0", "value": None, "pick": 5})  # 5 % 3 = 2: the third of 1, 2, 3
    # The interpreter adds the invoke's f; a completion names its own only when it differs (a delete).
    assert done["type"] == OK and "f" not in done and done["value"] == 3
    assert node.writes == [("PUT", "cart-0", b"1,2", ctx({A: 2, B: 2}))]
    assert done["supersedes"] == [[A, 2], [B, 2]]
    assert done["version"] == {"dot": [A, 3], "clock": {"vector": {A: 3, B: 2}, "cloud": []}, "elements": [1, 2]}


def test_the_last_item_goes_by_a_delete_with_the_context():
    read = GetResult(True, ctx({A: 2}), [b"7"], [sibling_doc((A, 2), {A: 2})])
    client, node = client_with(read)
    done = client({"f": "remove", "key": "cart-0", "value": None, "pick": 0})
    assert done["type"] == OK and done["f"] == "delete" and done["value"] == 7
    assert node.writes == [("DELETE", "cart-0", b"", ctx({A: 2}))]
    assert done["version"]["deleted"] is True and done["version"]["elements"] == []


def test_a_remove_whose_read_found_nothing_fails_without_writing():
    client, node = client_with(GetResult(False, ctx({A: 4}), [], []))
    done = client({"f": "remove", "key": "cart-0", "value": None, "pick": 0})
    assert done["type"] == FAIL and done["empty"] is True and "nothing to remove" in done["error"]
    assert node.writes == []


def test_a_write_after_reading_a_tombstone_may_claim_the_tombstone():
    # The read found no live version, but its context holds the tombstone A/4 (and what it deleted).
    client, node = client_with(GetResult(False, ctx({A: 4}), [], []))
    done = client({"f": "add", "key": "cart-0", "value": 9})
    assert done["read_clock"] == {"vector": {A: 4}, "cloud": []}
    assert done["supersedes"] == []  # a tombstone is not a live version the write supersedes
    read = client({"f": "read", "key": "cart-0", "value": None})
    assert read["context_clock"] == {"vector": {A: 4}, "cloud": []} and read["value"] == []


# -- siblings: the remove rule --------------------------------------------------------------------

def finals(h: HistoryBuilder, elements, versions, at: float = 100, context=None) -> None:
    for i, node in enumerate(("n1", "n2", "n3")):
        h.read(10 + i, "cart", elements, at + i, at + i + 0.5, versions=versions, final=True, node=node,
               context=context)


def check(h: HistoryBuilder, test: dict = CART) -> dict:
    result = siblings.check(test, h.history(), None)
    json.dumps(result)
    return result


def base() -> HistoryBuilder:
    """Adds of 1 (A/1) and 2 (A/2, which read A/1), then a remove of 1 that read A/2 (A/3)."""
    h = HistoryBuilder()
    h.add(0, "cart", 1, 0, 2, dot=(A, 1))
    h.add(0, "cart", 2, 3, 5, dot=(A, 2), seen=[(A, 1)], supersedes=[(A, 1)])
    h.remove(1, "cart", 1, 6, 8, dot=(A, 3), seen=[(A, 1), (A, 2)], supersedes=[(A, 2)], elements=[2])
    return h


def test_an_acknowledged_remove_that_held_is_valid_and_counted():
    h = base()
    finals(h, [2], [version((A, 3), [2], [(A, 2)])])
    result = check(h)
    assert result["valid"] is True
    assert result["removed_count"] == 1 and result["lost_count"] == 0
    assert result["removes_judged_count"] == 1 and result["remove_held_count"] == 1


def test_an_acknowledged_add_gone_with_no_remove_that_saw_it_is_lost():
    h = base()
    finals(h, [], [])  # 2 vanished, and no remove ever read it
    result = check(h)
    assert result["valid"] is False
    assert [(e["key"], e["element"]) for e in result["lost"]] == [("cart", 2)]
    assert result["removed_count"] == 1  # 1 is gone, but its remove explains it


def test_a_removed_item_back_in_a_descendant_of_the_remove_is_resurrected():
    h = base()
    h.add(2, "cart", 3, 10, 12, dot=(A, 4), seen=[(A, 1), (A, 2), (A, 3)], supersedes=[(A, 3)])
    # The store wrote 1 back into a version that descends from the remove, with nothing concurrent.
    finals(h, [1, 2, 3], [version((A, 4), [1, 2, 3], [(A, 1), (A, 2), (A, 3)])])
    result = check(h)
    assert result["valid"] is False
    assert result["resurrected_count"] == 1
    assert result["resurrected"][0]["element"] == 1 and result["resurrected"][0]["remove"] == f"{A}/3"


def test_a_superseded_version_that_comes_back_resurrects_the_removed_item():
    h = base()
    finals(h, [1, 2], [version((A, 3), [2], [(A, 2)]), version((A, 2), [1, 2], [(A, 1)])])
    result = check(h)
    assert result["valid"] is False and result["resurrected_count"] == 1


def test_an_add_concurrent_with_the_remove_may_keep_the_item():
    h = base()
    # B's add read A/2 (holding 1) before the remove wrote: its version is concurrent with A/3.
    h.add(2, "cart", 5, 6.5, 9, dot=(B, 1), seen=[(A, 1), (A, 2)], supersedes=[(A, 2)])
    finals(h, [1, 2, 5], [version((A, 3), [2], [(A, 2)]), version((B, 1), [1, 2, 5], [(A, 1), (A, 2)])])
    result = check(h)
    assert result["valid"] is True
    assert result["remove_concurrent_count"] == 1 and result["resurrected_count"] == 0


def test_a_merge_of_the_remove_and_a_concurrent_add_may_keep_the_item():
    h = base()
    h.add(2, "cart", 5, 6.5, 9, dot=(B, 1), seen=[(A, 1), (A, 2)], supersedes=[(A, 2)])
    h.read(3, "cart", [1, 2, 5], 10, 11, versions=[version((A, 3), [2], [(A, 2)]),
                                                   version((B, 1), [1, 2, 5], [(A, 1), (A, 2)])])
    merged = [(A, 1), (A, 2), (A, 3), (B, 1)]
    h.add(3, "cart", 6, 12, 14, dot=(A, 4), seen=merged, supersedes=[(A, 3), (B, 1)])
    finals(h, [1, 2, 5, 6], [version((A, 4), [1, 2, 5, 6], merged)])
    result = check(h)
    assert result["valid"] is True
    assert result["remove_merged_count"] == 1


def test_a_resurrection_through_a_clock_at_the_bound_is_not_judged():
    h = base()
    h.add(2, "cart", 3, 10, 12, dot=(A, 4), seen=[(A, 1), (A, 2), (A, 3)], supersedes=[(A, 3)])
    finals(h, [1, 2, 3], [version((A, 4), [1, 2, 3], [(A, 1), (A, 2), (A, 3)])])
    # One actor: the clocks hold one entry, so a bound of 1 means every clock is at it.
    result = check(h, {**CART, "max_context_entries": 1})
    assert result["valid"] is True and result["remove_truncated_count"] == 1


def test_an_info_remove_explains_an_absent_item_but_is_not_judged():
    h = HistoryBuilder()
    h.add(0, "cart", 1, 0, 2, dot=(A, 1))
    h.remove(1, "cart", 1, 3, 5, outcome="info")
    h.remove(2, "cart", None, 6, 7, outcome="fail")  # its read found nothing
    finals(h, [], [])
    result = check(h)
    assert result["valid"] is True and result["removed_count"] == 1
    assert result["removes_judged_count"] == 0 and result["remove_info_count"] == 1
    assert result["remove_empty_count"] == 1 and result["fail_count"] == 0  # no add failed


def test_a_delete_is_judged_and_counted():
    h = HistoryBuilder()
    h.add(0, "cart", 1, 0, 2, dot=(A, 1))
    h.remove(1, "cart", 1, 3, 5, dot=(A, 2), seen=[(A, 1)], supersedes=[(A, 1)], delete=True)
    finals(h, [], [], context=[(A, 1), (A, 2)])
    result = check(h)
    assert result["valid"] is True
    assert result["deletes_judged_count"] == 1 and result["delete_ok_count"] == 1 and result["remove_held_count"] == 1


# -- causality: tombstones and truncation ---------------------------------------------------------

def causal(h: HistoryBuilder, test: dict = CART) -> dict:
    result = causality.check(test, h.history(), None)
    json.dumps(result)
    return result


def test_a_reaped_tombstone_and_what_it_deleted_are_not_dropped():
    h = HistoryBuilder()
    h.add(0, "cart", 1, 0, 2, dot=(A, 1))
    h.remove(1, "cart", 1, 3, 5, dot=(A, 2), seen=[(A, 1)], supersedes=[(A, 1)], delete=True)
    finals(h, [], [])  # reaped: nothing at all, not even a context
    result = causal(h)
    assert result["valid"] is True and result["reaped_count"] == 2 and result["tombstones"] == 1


def test_a_version_no_tombstone_covers_is_still_dropped():
    h = HistoryBuilder()
    h.add(0, "cart", 1, 0, 2, dot=(A, 1))
    h.add(2, "cart", 2, 0.5, 2.5, dot=(B, 1))  # concurrent with the delete below, never deleted
    h.remove(1, "cart", 1, 3, 5, dot=(A, 2), seen=[(A, 1)], supersedes=[(A, 1)], delete=True)
    finals(h, [], [])
    result = causal(h)
    assert result["valid"] is False and [d["dot"] for d in result["dropped"]] == [f"{B}/1"]


def test_the_final_context_covers_a_tombstone_read_as_not_found():
    h = HistoryBuilder()
    h.add(0, "cart", 1, 0, 2, dot=(A, 1))
    h.remove(1, "cart", 1, 3, 5, dot=(A, 2), seen=[(A, 1)], supersedes=[(A, 1)], delete=True)
    finals(h, [], [], context=[(A, 1), (A, 2)])
    result = causal(h)
    assert result["valid"] is True and result["reaped_count"] == 0 and result["dropped_count"] == 0


def test_a_write_after_a_tombstone_claims_it_through_the_context_clock():
    h = HistoryBuilder()
    h.add(0, "cart", 1, 0, 2, dot=(A, 1))
    h.remove(1, "cart", 1, 3, 5, dot=(A, 2), seen=[(A, 1)], supersedes=[(A, 1)], delete=True)
    # The add read "not found" with the tombstone in its context: read_clock is the context's clock.
    h.add(2, "cart", 3, 6, 8, dot=(A, 3), seen=[(A, 1), (A, 2)], supersedes=[])
    finals(h, [3], [version((A, 3), [3], [(A, 1), (A, 2)])])
    assert causal(h)["valid"] is True
    # Live versions only (the old read_clock) would have made the same write over-claim A/1 and A/2.
    h2 = HistoryBuilder()
    h2.add(0, "cart", 1, 0, 2, dot=(A, 1))
    h2.remove(1, "cart", 1, 3, 5, dot=(A, 2), seen=[(A, 1)], supersedes=[(A, 1)], delete=True)
    h2.add(2, "cart", 3, 6, 8, dot=(A, 3), seen=[(A, 1), (A, 2)], supersedes=[], read_clock=[])
    finals(h2, [3], [version((A, 3), [3], [(A, 1), (A, 2)])])
    assert causal(h2)["over_claimed_count"] == 1


def test_not_maximal_is_not_judged_when_a_final_clock_is_at_the_bound():
    h = HistoryBuilder()
    h.add(0, "cart", 1, 0, 2, dot=(A, 1))
    h.add(1, "cart", 2, 3, 5, dot=(B, 1), seen=[(A, 1)], supersedes=[(A, 1)])
    # B/1's descendant forgot A/1 by truncation, so A/1 came back beside it.
    h.add(2, "cart", 3, 6, 8, dot=(B, 2), clock=clock_json(clock_of([(B, 1), (B, 2)])), seen=[(A, 1), (B, 1)],
          supersedes=[(B, 1)])
    versions = [version((A, 1), [1]), {"dot": [B, 2], "clock": clock_json(clock_of([(B, 2)])), "elements": [1, 2, 3]}]
    finals(h, [1, 2, 3], versions)
    assert causal(h)["not_maximal_count"] == 1  # at the default bound this is a superseded version back
    result = causal(h, {**CART, "max_context_entries": 1})
    assert result["not_maximal_count"] == 0 and result["truncated_count"] >= 1


def test_the_run_reports_how_many_context_entries_its_clocks_reached():
    h = base()
    finals(h, [2], [version((A, 3), [2], [(A, 2)])])
    assert causal(h)["max_context_entries_seen"] == 1


# -- the truncation option ------------------------------------------------------------------------

def test_max_context_entries_reaches_every_node_toml():
    options = Options(workload="cart", max_context_entries=4)
    assert node_config(options) == {"max_context_entries": 4, "tombstone_grace": 3.0}
    assert node_config(Options(workload="register")) == {}
    cluster = local_cluster(2, {"mode": "vclock", "n": 3, "r": 2, "w": 2, "partitions": 16}, False, spares=1,
                            node_config=node_config(options))
    cluster.remove_scratch()  # nothing was written in it
    for host in cluster.roster:
        toml = render_node_toml(host, cluster.hosts)
        assert "max_context_entries = 4" in toml and "tombstone_grace = 3.0" in toml
        assert "request_timeout = 1.0" in toml  # the test settings are kept
    assert attrs.asdict(options)["max_context_entries"] == 4  # saved in test.json with the options

