"""A node whose Berkeley DB files were damaged while it was stopped: it starts anyway, with the
damaged environment moved aside, a new incarnation and what salvage kept, and anti-entropy refills
the rest; ``anti_entropy.coverage`` says when it has exchanged with every other replica."""

from __future__ import annotations

import base64
import os

import pytest

from dynamod.polling import wait_until

PAGE = 8192
KEYS = 150


def flip_leaf_pages(path: str, every: int) -> int:
    """Flip a byte in every ``every``-th B-tree leaf page of ``path``; returns how many."""
    with open(path, "r+b") as handle:
        data = handle.read()
        leaves = [p for p in range(1, len(data) // PAGE) if data[p * PAGE + 25] == 5]
        for page in leaves[::every]:
            handle.seek(page * PAGE + 6000)
            handle.write(bytes([data[page * PAGE + 6000] ^ 0x40]))
    return len(leaves[::every])


@pytest.mark.parametrize("damage", ["records", "meta", "log"])
def test_a_node_with_damaged_files_starts_fresh_and_is_refilled_by_anti_entropy(make_cluster, damage):
    cluster = make_cluster(partitions=8, anti_entropy_interval=0.2)
    writer = cluster.client("n1")
    values = {f"key-{i:04d}": b"value %d " % i + b"x" * 1000 for i in range(KEYS)}
    for key, value in values.items():
        writer.put(key, value, w=3)
    before = cluster.client("n3").status()["incarnation"]
    cluster.stop("n3")  # SIGTERM: a clean close
    data_dir = cluster.cluster.node("n3").data_dir
    if damage == "records":
        assert flip_leaf_pages(os.path.join(data_dir, "records.db"), every=3) > 0
    elif damage == "meta":
        os.truncate(os.path.join(data_dir, "meta.db"), 3000)
    else:
        [log] = [name for name in os.listdir(data_dir) if name.startswith("log.")]
        with open(os.path.join(data_dir, log), "r+b") as handle:
            handle.seek(5000)
            handle.write(b"\xff" * 64)
    cluster.start("n3")
    node = cluster.client("n3")
    status = node.status()
    recovery = status["storage"]["recovery"]
    assert recovery is not None and os.path.isdir(recovery["quarantined"])
    assert os.path.dirname(recovery["quarantined"]) == data_dir.rstrip("/")
    assert status["incarnation"] != before
    coverage = wait_until(lambda: node.status()["anti_entropy"]["coverage"], 60, interval=0.2,
                          done=lambda c: c["pairs_exchanged"] == c["pairs_total"])
    assert coverage["pairs_exchanged"] == coverage["pairs_total"], "timed out waiting for anti-entropy coverage"
    assert coverage["pairs_total"] == 8 * 2
    for key, value in values.items():  # every version its peers held is here now, no client read needed
        replica = node.replica(key)
        assert replica is not None, key
        assert [base64.b64decode(s["value"]) for s in replica["siblings"]] == [value], key
    # and it serves and coordinates writes with its new actors
    node.put("after", b"new", w=3)
    assert cluster.client("n2").get("after").siblings == [b"new"]
