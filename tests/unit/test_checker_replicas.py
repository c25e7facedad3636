"""replicas: a version may leave a replica only for a version that has seen it; crashes, stand-ins
and lww are not judged."""

from __future__ import annotations

from dynacheck.checkers import replicas

TEST = {"n": 3, "nodes": ["n1", "n2", "n3"], "mode": "vclock"}
MS = 1_000_000


def sibling(actor: str, counter: int, seen: dict[str, int] | None = None) -> dict:
    return {"dot": [actor, counter], "clock": {"vector": {actor: counter, **(seen or {})}, "cloud": []},
            "elements": [counter], "deleted": False}


def poll(ops: list, node: str, at_ms: int, siblings: list[dict], key: str = "cart-0") -> None:
    base = {"process": "monitor", "f": "replica", "key": key, "node": node}
    ops.append({**base, "type": "invoke", "value": None, "time": at_ms * MS})
    ops.append({**base, "type": "ok", "value": siblings, "time": at_ms * MS + MS})


def numbered(ops: list) -> list:
    return [{"index": index, **op} for index, op in enumerate(sorted(ops, key=lambda op: op["time"]))]


def test_a_version_superseded_by_one_that_has_seen_it_may_go():
    ops: list = []
    poll(ops, "n1", 0, [sibling("a", 1), sibling("b", 1)])
    poll(ops, "n1", 500, [sibling("a", 2, seen={"b": 1})])  # a/2 saw a/1 and b/1
    result = replicas.check(TEST, numbered(ops))
    assert result["valid"] is True and result["pairs_judged"] == 1 and result["vanished_count"] == 0


def test_a_version_that_vanished_without_a_descendant_is_invalid():
    ops: list = []
    poll(ops, "n2", 0, [sibling("a", 1), sibling("b", 1)])
    poll(ops, "n2", 500, [sibling("a", 2)])  # b/1 is gone and nothing has seen it
    poll(ops, "n1", 500, [sibling("a", 1), sibling("b", 1)])  # another replica still has it: not enough
    result = replicas.check(TEST, numbered(ops))
    assert result["valid"] is False and result["vanished_count"] == 1
    assert result["vanished"][0] == {"node": "n2", "key": "cart-0", "dot": "b/1", "held_ms": 1.0,
                                     "gone_ms": 500.0, "elements": [1]}


def test_a_crash_of_the_node_between_two_polls_is_not_judged_but_one_of_another_node_is():
    for crashed, expected in (("n2", True), ("n3", False)):
        ops: list = []
        poll(ops, "n2", 0, [sibling("a", 1), sibling("b", 1)])
        ops.append({"process": "nemesis", "type": "invoke", "f": "start-power", "value": {"nodes": [crashed], "id": 0},
                    "time": 100 * MS})
        ops.append({"process": "nemesis", "type": "ok", "f": "start-power", "value": {}, "time": 150 * MS})
        ops.append({"process": "nemesis", "type": "invoke", "f": "stop-power", "value": {"nodes": [crashed], "id": 0},
                    "time": 200 * MS})
        ops.append({"process": "nemesis", "type": "ok", "f": "stop-power",
                    "value": {"plan": {"nodes": [crashed], "id": 0}, "nodes": {crashed: "ok"}}, "time": 300 * MS})
        poll(ops, "n2", 500, [sibling("a", 1)])
        assert replicas.check(TEST, numbered(ops))["valid"] is expected, crashed


def test_the_rule_does_not_apply_with_stand_ins_or_last_write_wins():
    ops: list = []
    poll(ops, "n1", 0, [sibling("a", 1)])
    poll(ops, "n1", 500, [])
    assert replicas.check({**TEST, "nodes": ["n1", "n2", "n3", "n4"]}, numbered(ops))["applies"] is False
    assert replicas.check({**TEST, "mode": "lww"}, numbered(ops))["applies"] is False
    assert replicas.check(TEST, numbered(ops))["valid"] is False


def test_a_replica_that_held_only_tombstones_may_reap_them_but_not_a_live_version():
    tombstone = {**sibling("a", 2, seen={"b": 1}), "deleted": True}
    ops: list = []
    poll(ops, "n1", 0, [tombstone])
    poll(ops, "n1", 500, [])  # the tombstone was reaped: the record is gone
    poll(ops, "n2", 0, [tombstone, sibling("c", 1)])
    poll(ops, "n2", 500, [])  # a live version went with it: lost
    result = replicas.check(TEST, numbered(ops))
    assert result["reaped_count"] == 1 and result["vanished_count"] == 2 and result["valid"] is False


def test_a_version_forgotten_by_a_truncated_context_is_not_a_loss_but_one_below_the_bound_is():
    ops: list = []
    poll(ops, "n1", 0, [sibling("a", 1)])
    # b/1's context had a/1 and four more actors; truncated to the bound of 4, it forgot a/1.
    poll(ops, "n1", 500, [sibling("b", 1, seen={"c": 1, "d": 1, "e": 1})])
    truncated = replicas.check({**TEST, "max_context_entries": 4}, numbered(ops))
    assert truncated["valid"] is True and truncated["truncated_count"] == 1 and truncated["vanished_count"] == 0
    assert replicas.check({**TEST, "max_context_entries": 64}, numbered(ops))["vanished_count"] == 1


def test_a_reaped_tombstone_replaced_by_a_new_write_before_the_next_poll_is_reaped_not_vanished():
    # Found by ``dynacheck sim`` (seed 106): every replica reaped a cart's tombstone and the next
    # remove wrote a new one, unaware of it, all between two polls of the monitor.
    reaped = {**sibling("a", 4), "deleted": True}
    ops: list = []
    poll(ops, "n1", 0, [reaped])
    poll(ops, "n1", 500, [{**sibling("b", 2), "deleted": True}])
    result = replicas.check(TEST, numbered(ops))
    assert result["valid"] is True and result["reaped_count"] == 1 and result["vanished_count"] == 0
