"""Replacing and removing killed nodes of a real 5-node cluster under a concurrent writer (issue 13):
every acknowledged write survives and every key ends on exactly its N replicas."""

from __future__ import annotations

import subprocess
import sys

import pytest

from dynamod.client import ClientError
from tests.integration.test_membership import Writer, wait_for

pytestmark = pytest.mark.integration

FAST = {"heartbeat_interval": 0.2, "gossip_interval": 0.3, "transfer_interval": 0.2, "handoff_interval": 0.3,
        "anti_entropy_interval": 0.1}


def sees_status(cluster, observer: str, node: str, status: str) -> bool:
    return any(m["id"] == node and m["status"] == status for m in cluster.client(observer).status()["members"])


def sees_down(cluster, observer: str, node: str) -> bool:
    return sees_status(cluster, observer, node, "down")


def dynactl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dynactl", *args], capture_output=True, text=True, timeout=200)


def holders(cluster, live: list[str], key: str) -> set[str]:
    return {node for node in live if cluster.client(node).replica(key) is not None}


def replica_sets(cluster, node: str) -> list[set[str]]:
    return [set(p) for p in cluster.client(node).ring()["preference_lists"]]


def fill_line(cluster, node: str) -> str:
    fill = cluster.client(node).transfers()["fill"]
    return f"{node}: {fill['filled']}/{fill['gained']} gained partitions filled"


def converged(cluster, live: list[str], keys: int) -> bool:
    """Every live member reports a settled ring, its fill complete, and N copies per key in all."""
    for node in live:
        document = cluster.client(node).transfers()
        if not document["settled"] or not document["fill"]["complete"] or document["outbound"]["held_keys"]:
            return False
    return sum(cluster.client(node).status()["anti_entropy"]["keys"] for node in live) == 3 * keys


def test_a_killed_node_is_replaced_and_another_removed_under_a_writer_without_losing_a_write(make_cluster):
    cluster = make_cluster(nodes=5, partitions=32, **FAST)
    wait_for(lambda: cluster.client("n1").transfers()["settled"], "the founding members reporting in")
    writer = Writer(cluster.cluster.node("n1").http, "dead")
    writer.start()
    try:
        wait_for(lambda: len(writer.acknowledged) > 50, "the writer's first acknowledged writes")

        # Kill n5 and replace it with a fresh node: a rename of exactly its partitions.
        before = cluster.client("n1").ring()["ownership"]
        cluster.kill("n5")
        wait_for(lambda: sees_down(cluster, "n1", "n5"), "n1 seeing n5 down")
        fresh = cluster.add()
        plan = cluster.client(fresh).join(cluster.peer("n1"), replace="n5", dry_run=True)["plan"]
        assert plan["change"] == "replace" and plan["replaces"] == "n5"
        assert sorted(m["partition"] for m in plan["moves"]) == [p for p, o in enumerate(before) if o == "n5"]
        assert {(m["from"], m["to"]) for m in plan["moves"]} == {("n5", fresh)} and plan["at_risk"] == []
        assert cluster.client("n1").ring()["ownership"] == before, "a dry run changes nothing"
        answer = cluster.client(fresh).join(cluster.peer("n1"), replace="n5")
        assert answer["replaces"] == "n5" and "n5" not in answer["members"]
        after = cluster.client("n1").ring()["ownership"]
        assert after == [fresh if owner == "n5" else owner for owner in before]
        progress = []
        # Every survivor, not just n1, must have gossiped the replacement up: a remove through n2 is
        # refused (409, "another change is in progress") while n2 still sees it joining.
        wait_for(lambda: progress.append(fill_line(cluster, fresh)) or all(
            sees_status(cluster, observer, fresh, "up") for observer in ("n1", "n2", "n3", fresh)),
            "the replacement filled and up for every survivor", seconds=120, describe=lambda: progress[-1])
        print("fill progress of the replacement:", progress[0], "...", progress[-1])
        fill = cluster.client(fresh).transfers()["fill"]
        replicated = sum(1 for p in cluster.client("n1").ring()["preference_lists"] if fresh in p)
        assert fill["complete"] and fill["gained"] == fill["filled"] == replicated
        assert all(set(p["exchanged"]) == set(p["replicas"]) for p in fill["partitions"]), fill

        # Kill n4 and remove it: its partitions go to the others.
        cluster.kill("n4")
        wait_for(lambda: sees_down(cluster, "n2", "n4"), "n2 seeing n4 down")
        with pytest.raises(ClientError) as up:
            cluster.client("n2").remove_node("n3")
        assert up.value.status == 409 and "sees it up" in up.value.body["error"]
        dry = cluster.client("n2").remove_node("n4", dry_run=True)
        assert dry["dry_run"] and {m["from"] for m in dry["plan"]["moves"]} == {"n4"}
        assert cluster.client("n2").ring()["ownership"] == after
        live = ["n1", "n2", "n3", fresh]
        removed = dynactl("--node", cluster.cluster.node("n2").http, "--format", "json", "remove", "n4",
                          "--wait", "--timeout", "150")
        assert removed.returncode == 0, removed.stderr
        assert "partitions filled" in removed.stderr and "n4 ->" in removed.stderr, removed.stderr
        lines = [part.strip() for part in removed.stderr.replace("\n", "\r").split("\r") if "filled" in part]
        print(f"dynactl remove --wait: {len(lines)} progress lines, first {lines[0]!r}, last {lines[-1]!r}")
        assert "n4" not in cluster.client("n2").ring()["ownership"]
    finally:
        writer.halt.set()
        writer.join()
    acknowledged = writer.acknowledged
    print(f"acknowledged {len(acknowledged)} writes, {len(writer.failed)} failed (unacknowledged)")
    assert len(acknowledged) > 200
    wait_for(lambda: converged(cluster, live, len(acknowledged)), "every key on exactly three live nodes",
             seconds=180, every=1.0,
             describe=lambda: "; ".join(fill_line(cluster, n) for n in live))

    preference = replica_sets(cluster, "n1")
    from dynamod.core.ring import partition_of

    wrong = {}
    for key in acknowledged:
        found = holders(cluster, live, key)
        if found != preference[partition_of(key.encode(), 32)]:
            wrong[key] = sorted(found)
    assert not wrong, f"{len(wrong)} keys not on exactly their replicas, e.g. {list(wrong.items())[:3]}"
    reader = cluster.client("n3")
    lost = [key for key, value in acknowledged.items() if reader.get(key).siblings != [value]]
    print(f"acknowledged writes lost: {len(lost)}")
    assert not lost, f"{len(lost)} acknowledged writes lost or wrong, e.g. {lost[:3]}"


def test_dead_node_operations_that_cannot_be_done_are_refused(make_cluster):
    cluster = make_cluster(nodes=3, partitions=16, **FAST)
    wait_for(lambda: cluster.client("n1").transfers()["settled"], "the founding members reporting in")
    with pytest.raises(ClientError) as unknown:
        cluster.client("n1").remove_node("ghost")
    assert unknown.value.status == 409 and "not a member" in unknown.value.body["error"]
    with pytest.raises(ClientError) as itself:
        cluster.client("n1").remove_node("n1")
    assert itself.value.status == 409 and "use leave" in itself.value.body["error"]
    fresh = cluster.add()
    with pytest.raises(ClientError) as alive:
        cluster.client(fresh).join(cluster.peer("n1"), replace="n2")
    assert alive.value.status == 409 and "sees it up" in alive.value.body["error"]
    assert [m["id"] for m in cluster.client(fresh).status()["members"]] == [fresh]
    plan = cluster.client("n1").leave(dry_run=True)
    assert plan["dry_run"] and {m["from"] for m in plan["plan"]["moves"]} == {"n1"}
    assert cluster.client("n1").status()["members"][0]["status"] == "up"
    # The CLI: a remove of a live node is refused with exit 1 and the reason.
    cli = dynactl("--node", cluster.cluster.node("n1").http, "remove", "n2", "--dry-run")
    assert cli.returncode == 1 and "sees it up" in cli.stderr

    # A dry run of the local form starts a fresh node, prints the plan, and forgets the node again.
    cluster.kill("n3")
    wait_for(lambda: sees_down(cluster, "n1", "n3"), "n1 seeing n3 down")
    directory = str(cluster.cluster.directory)
    nodes_before = [n.id for n in cluster.cluster.load().nodes]
    staged = dynactl("local", "replace", "n3", "--dir", directory, "--dry-run")
    assert staged.returncode == 0, staged.stderr
    assert "replaces n3" in staged.stdout and "n3 -> " in staged.stdout and "WARNING" in staged.stdout
    assert [n.id for n in cluster.cluster.load().nodes] == nodes_before

    # With n2 down too, n3's partitions have no other replica up: refused without --force.
    cluster.kill("n2")
    wait_for(lambda: sees_down(cluster, "n1", "n2"), "n1 seeing n2 down")
    risky = dynactl("--node", cluster.cluster.node("n1").http, "remove", "n3")
    assert risky.returncode == 1 and "refused" in risky.stderr and "AT RISK" in risky.stderr, risky.stderr
    assert "n3" in cluster.client("n1").ring()["ownership"], "a refused removal changes nothing"
    forced = dynactl("--node", cluster.cluster.node("n1").http, "--format", "json", "remove", "n3", "--force")
    assert forced.returncode == 0, forced.stderr
    assert set(cluster.client("n1").ring()["ownership"]) == {"n1", "n2"}
