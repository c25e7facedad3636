"""Joins and leaves of real processes: data follows ownership, nothing acknowledged is lost."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

from dynamod.client import ClientError, DynamoClient
from dynamod.polling import wait_until

pytestmark = pytest.mark.integration

FAST = {"heartbeat_interval": 0.2, "gossip_interval": 0.3, "transfer_interval": 0.2}


def wait_for(condition, what: str, seconds: float = 60.0, every: float = 0.2, describe=lambda: ""):
    value = wait_until(condition, seconds, interval=every)
    assert value, f"{what} did not happen within {seconds:.0f}s {describe()}"
    return value


def stored_copies(cluster, ids) -> dict[str, int]:
    return {node: cluster.client(node).status()["anti_entropy"]["keys"] for node in ids}


def settled(cluster, node: str, members: int) -> bool:
    document = cluster.client(node).transfers()
    return document["settled"] and len(document["members"]) == members \
        and all(m["status"] == "up" for m in document["members"])


class Writer(threading.Thread):
    """Writes fresh keys through one node until stopped, remembering the acknowledged ones."""

    def __init__(self, address: str, prefix: str):
        super().__init__(daemon=True)
        self.client = DynamoClient(address, timeout=5)
        self.prefix = prefix
        self.acknowledged: dict[str, bytes] = {}
        self.failed: list[str] = []
        self.halt = threading.Event()

    def run(self) -> None:
        i = 0
        while not self.halt.is_set():
            key, value = f"{self.prefix}-{i}", f"value-{i}".encode()
            try:
                self.client.put(key, value)
                self.acknowledged[key] = value
            except Exception as exc:  # noqa: BLE001 - an unacknowledged write promises nothing
                self.failed.append(f"{key}: {exc} {getattr(exc, 'body', '')}")
            i += 1
            time.sleep(0.005)


def test_a_sixth_node_joins_a_loaded_cluster_takes_its_share_and_leaves_without_losing_a_key(make_cluster):
    cluster = make_cluster(nodes=5, partitions=64, **FAST)
    loader = cluster.client("n1")
    expected = {f"load-{i}": f"loaded-{i}".encode() for i in range(600)}
    for key, value in expected.items():
        loader.put(key, value)
    wait_for(lambda: settled(cluster, "n1", 5), "the founding members reporting in")

    writer = Writer(cluster.cluster.node("n2").http, "during-join")
    writer.start()
    newcomer = cluster.add()
    joined = cluster.client(newcomer).join(cluster.peer("n1"))
    assert joined["partitions_claimed"] == 64 // 6 and len(joined["members"]) == 6
    wait_for(lambda: settled(cluster, "n3", 6), "the join settling", seconds=90)
    writer.halt.set()
    writer.join()
    expected.update(writer.acknowledged)
    assert len(writer.acknowledged) > 20 and not writer.failed

    everyone = cluster.ids
    # Every key ends up on exactly its N owners: the newcomer got its share, no orphan copy stayed.
    copies = wait_for(lambda: (lambda c: c if sum(c.values()) == 3 * len(expected) else None)(
        stored_copies(cluster, everyone)), "each key held by exactly three nodes")
    share = 3 * len(expected) / 6
    assert 0.6 * share < copies[newcomer] < 1.4 * share, copies
    for node in ("n1", newcomer):
        reader = cluster.client(node)
        wrong = [key for key, value in expected.items() if reader.get(key).siblings != [value]]
        assert not wrong, f"{len(wrong)} keys read wrong through {node}, e.g. {wrong[:3]}"

    writer = Writer(cluster.cluster.node("n4").http, "during-leave")
    writer.start()
    left = cluster.client(newcomer).leave()
    assert left["status"] == "leaving"
    wait_for(lambda: not cluster.running(newcomer), "the leaving node handing off and stopping", seconds=90)
    wait_for(lambda: settled(cluster, "n1", 5), "the leave settling")
    writer.halt.set()
    writer.join()
    expected.update(writer.acknowledged)
    remaining = [node for node in everyone if node != newcomer]
    wait_for(lambda: sum(stored_copies(cluster, remaining).values()) == 3 * len(expected),
             "each key held by exactly three of the remaining nodes",
             describe=lambda: f"{3 * len(expected)} wanted, held: {stored_copies(cluster, remaining)}")
    reader = cluster.client("n5")
    wrong = [key for key, value in expected.items() if reader.get(key).siblings != [value]]
    assert not wrong, f"{len(wrong)} keys lost or wrong after the leave, e.g. {wrong[:3]}"
    assert cluster.client("n1").ring()["ownership"].count(newcomer) == 0


def test_membership_changes_that_cannot_be_done_are_refused_and_change_nothing(make_cluster):
    cluster = make_cluster(nodes=3, partitions=16, **FAST)
    wait_for(lambda: settled(cluster, "n1", 3), "the founding members reporting in")
    loner = cluster.add()
    before = cluster.client(loner).status()

    # A seed nobody listens on: HTTP 502, and the CLI says so with exit 1.
    with pytest.raises(ClientError) as refused:
        cluster.client(loner).join("127.0.0.1:9")
    assert refused.value.status == 502 and "unreachable" in refused.value.body["error"]
    cli = subprocess.run([sys.executable, "-m", "dynactl", "--node", cluster.cluster.node(loner).http,
                          "join", "127.0.0.1:9"], capture_output=True, text=True, timeout=60)
    assert cli.returncode == 1 and "unreachable" in cli.stderr and cli.stdout == ""

    # The last (only) member of its own cluster cannot leave.
    with pytest.raises(ClientError) as last:
        cluster.client(loner).leave()
    assert last.value.status == 409 and "last member" in last.value.body["error"]
    after = cluster.client(loner).status()
    assert [m["id"] for m in after["members"]] == [loner] and after["membership"] == before["membership"] | {
        k: after["membership"][k] for k in ("rounds", "exchanges", "failed_exchanges")}

    # A join while another is still moving data is refused with the reason; the first completes.
    second = cluster.add()
    cluster.client(loner).join(cluster.peer("n1"))
    with pytest.raises(ClientError) as busy:
        cluster.client(second).join(cluster.peer("n1"))
    assert busy.value.status == 409 and "in progress" in busy.value.body["error"]
    assert [m["id"] for m in cluster.client(second).status()["members"]] == [second]
    wait_for(lambda: settled(cluster, "n2", 4), "the first join settling")
    cluster.client(second).join(cluster.peer("n2"))
    wait_for(lambda: settled(cluster, "n1", 5), "the second join settling")

    # A member cannot join again, and a cluster's node cannot join another cluster.
    with pytest.raises(ClientError) as again:
        cluster.client("n3").join(cluster.peer("n1"))
    assert again.value.status == 409 and "already in a cluster" in again.value.body["error"]
