"""The gossip service: many nodes in one process on a fake clock, links that can be cut."""

from __future__ import annotations

import random
from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.logger import capturedLogs

from dynamod.core.membership import LEFT, MEMBER, ClusterState, MalformedState, MemberEntry, state_to_wire
from dynamod.gossip import GossipService, MembershipError, StateFile
from tests.sim import SimNetwork, SimPeer


class GossipNode:
    """One node's gossip service, reachable through the sim network."""

    def __init__(self, network: SimNetwork, clock: Clock, node_id: str, state: ClusterState, everyone: list[str],
                 seed: int, seeds: tuple[str, ...] = ()):
        self.id = node_id
        self.pending = 0
        self.changes = 0
        peers = {other: SimPeer(network, node_id, other) for other in everyone if other != node_id}
        self.service = GossipService(
            node_id, state, peers, n=3, clock=clock, interval=1.0, timeout=1.0,
            is_up=lambda peer: peer not in network.down, pending=lambda: self.pending,
            wall_clock_ms=lambda: int(clock.seconds() * 1000), on_change=self._changed,
            seeds=seeds, rng=random.Random(seed))
        network.nodes[node_id] = self

    def _changed(self, old: ClusterState, new: ClusterState) -> None:
        self.changes += 1

    def handle_peer_request(self, op: str, payload: Any) -> Any:
        return {"gossip": self.service.handle_gossip, "join": self.service.handle_join}[op](payload)

    @property
    def state(self) -> ClusterState:
        return self.service.state


def entry(i: int) -> MemberEntry:
    return MemberEntry(f"n{i}", f"h{i}:7000", f"h{i}:8000")


def make_nodes(size: int, extra: int = 0, seed: int = 0,
               partitions: int = 64) -> tuple[SimNetwork, Clock, dict[str, GossipNode]]:
    """``size`` founding members plus ``extra`` nodes configured alone (to join later)."""
    clock = Clock()
    network = SimNetwork(clock)
    founding = ClusterState.initial([entry(i) for i in range(1, size + 1)], partitions)
    everyone = [f"n{i}" for i in range(1, size + extra + 1)]
    nodes = {}
    for i in range(1, size + extra + 1):
        state = founding if i <= size else ClusterState.initial([entry(i)], partitions)
        nodes[f"n{i}"] = GossipNode(network, clock, f"n{i}", state, everyone, seed * 100 + i, seeds=("n1",))
    return network, clock, nodes


def run_rounds(clock: Clock, nodes: dict[str, GossipNode], rounds: int) -> None:
    for _ in range(rounds):
        for node in nodes.values():
            if node.state.status_of(node.id) != LEFT:
                node.service.round()
        clock.advance(1)


def views(nodes: dict[str, GossipNode]) -> set[tuple]:
    """The distinct (members, ownership) views of the nodes still in the cluster."""
    return {(tuple(sorted((m.id, m.status, m.version) for m in n.state.members.values())), n.state.ownership)
            for n in nodes.values() if n.state.status_of(n.id) != LEFT}


def rounds_until_one_view(clock: Clock, nodes: dict[str, GossipNode], limit: int = 60) -> int:
    for rounds in range(1, limit + 1):
        run_rounds(clock, nodes, 1)
        if len(views(nodes)) == 1 and all(n.state.settled() and not n.state.in_transition()
                                          for n in nodes.values() if n.state.status_of(n.id) != LEFT):
            return rounds
    raise AssertionError(f"no single settled view after {limit} rounds: {len(views(nodes))} views")


def test_a_join_reaches_every_node_of_a_ten_node_cluster_within_a_few_rounds():
    measured = []
    for seed in range(20):
        network, clock, nodes = make_nodes(10, extra=1, seed=seed)
        run_rounds(clock, nodes, 2)
        nodes["n11"].service.joined(nodes["n3"].service.handle_join(["n11", "h11:7000", "h11:8000"]), "n3")
        measured.append(rounds_until_one_view(clock, nodes))
        assert nodes["n1"].state.members["n11"].status == MEMBER
        assert len(nodes["n1"].state.ring.partitions_of("n11")) == 64 // 11
    print("rounds until all 11 nodes share the settled view, 20 seeds:", sorted(measured))
    assert max(measured) <= 12


def test_membership_converges_after_a_partition_heals_with_changes_made_on_both_sides():
    network, clock, nodes = make_nodes(10, extra=1, seed=7)
    run_rounds(clock, nodes, 3)
    left_side, right_side = {f"n{i}" for i in (1, 2, 3, 4, 5, 11)}, {f"n{i}" for i in range(6, 11)}
    network.partition(left_side, right_side)
    # Each side changes membership from the same ring version: a join on one, a leave on the other.
    nodes["n11"].service.joined(nodes["n2"].service.handle_join(["n11", "h11:7000", "h11:8000"]), "n2")
    nodes["n9"].service.leave()
    run_rounds(clock, nodes, 10)
    assert len(views(nodes)) >= 2, "the sides cannot have agreed while cut off"
    network.heal()
    rounds = rounds_until_one_view(clock, nodes)
    print(f"one view {rounds} rounds after the partition healed")
    final = nodes["n1"].state
    assert final.members["n11"].status == MEMBER and final.members["n9"].status == LEFT
    assert "n9" not in final.ownership and len(final.ring.partitions_of("n11")) >= 1
    assert all(n.state.ownership == final.ownership for n in nodes.values() if n.id != "n9")


def test_a_node_with_transfers_pending_holds_the_join_open_and_refuses_another():
    network, clock, nodes = make_nodes(4, extra=1)
    run_rounds(clock, nodes, 3)
    nodes["n2"].pending = 12  # n2 still holds keys for the newcomer
    nodes["n5"].service.joined(nodes["n1"].service.handle_join(["n5", "h5:7000", "h5:8000"]), "n1")
    run_rounds(clock, nodes, 8)
    assert nodes["n3"].state.members["n5"].status == "joining"
    assert nodes["n3"].state.transfers_pending()["n2"] == 12
    before = nodes["n3"].state
    with pytest.raises(MembershipError, match="n5 joining.*n2 holds 12 keys"):
        nodes["n3"].service.handle_join(["n6", "h6:7000", "h6:8000"])
    with pytest.raises(MembershipError, match="in progress"):
        nodes["n3"].service.leave()
    assert nodes["n3"].state == before, "a refused change leaves the state alone"
    nodes["n2"].pending = 0
    rounds_until_one_view(clock, nodes)
    assert nodes["n3"].state.members["n5"].status == MEMBER


def test_joins_and_leaves_that_cannot_be_done_are_refused_with_the_state_unchanged():
    network, clock, nodes = make_nodes(3, extra=1)
    with pytest.raises(MembershipError, match="already a member"):
        nodes["n1"].service.handle_join(["n2", "h2:7000", "h2:8000"])
    with pytest.raises(MembershipError, match="already uses peer address"):
        nodes["n1"].service.handle_join(["n9", "h2:7000", "h9:8000"])
    with pytest.raises(ValueError):
        nodes["n1"].service.handle_join(["n9", 7, None])
    with pytest.raises(MembershipError, match="last member"):
        nodes["n4"].service.leave()
    assert nodes["n1"].changes == 0 and nodes["n4"].changes == 0


def test_a_join_asked_again_while_the_node_is_joining_is_answered_with_the_state():
    """The joiner's request timed out after the seed admitted it (the answer was lost): the same
    join again, same id and addresses, gets the state and changes nothing; other addresses, or
    a dry run, are still refused (and so is a member that has finished joining: see below)."""
    network, clock, nodes = make_nodes(3, extra=1)
    run_rounds(clock, nodes, 3)
    first = nodes["n1"].service.handle_join(["n4", "h4:7000", "h4:8000"])
    admitted = nodes["n1"].state
    changes = nodes["n1"].changes
    assert admitted.members["n4"].status == "joining"
    again = nodes["n1"].service.handle_join(["n4", "h4:7000", "h4:8000", {"dry_run": False}])
    assert again == {"state": first, "plan": None} and nodes["n1"].state == admitted
    assert nodes["n1"].changes == changes
    nodes["n4"].service.joined(again, "n1")
    assert nodes["n4"].state.status_of("n4") == "joining"
    with pytest.raises(MembershipError, match="already a member"):
        nodes["n1"].service.handle_join(["n4", "h4:7000", "h9:8000"])
    with pytest.raises(MembershipError, match="already a member"):
        nodes["n1"].service.handle_join(["n4", "h4:7000", "h4:8000", {"dry_run": True}])


def test_malformed_or_foreign_gossip_is_logged_and_never_merged():
    network, clock, nodes = make_nodes(3, extra=1)
    node = nodes["n1"]
    before = node.state
    foreign = state_to_wire(ClusterState.initial([entry(7), entry(8)], 64))
    for bad in ({"members": 3}, [1, 2], foreign, {**state_to_wire(before), "ownership": ["ghost"] * 64}):
        with capturedLogs() as logs, pytest.raises(MalformedState):
            node.service.handle_gossip(bad)
        assert any("refused gossip" in event["log_format"] for event in logs)
    assert node.state == before and node.service.stats["refused"] == 4
    # Over the network the sender sees an error and keeps its own state.
    nodes["n4"].service.exchange("n1")
    assert nodes["n4"].service.stats["exchanges"] == 0 and nodes["n4"].state.active()[0].id == "n4"


def test_the_state_survives_a_restart_through_its_file(tmp_path):
    network, clock, nodes = make_nodes(3, extra=1)
    path = str(tmp_path / "cluster-state.msgpack")
    nodes["n1"].service.state_file = StateFile(path)
    run_rounds(clock, nodes, 3)
    nodes["n1"].service.handle_join(["n4", "h4:7000", "h4:8000"])
    assert StateFile(path).load(64) == nodes["n1"].state
    assert StateFile(str(tmp_path / "absent")).load(64) is None
    with pytest.raises(MalformedState):
        StateFile(path).load(32)


def test_a_join_that_would_own_nothing_is_refused():
    network, clock, nodes = make_nodes(4, partitions=4)
    run_rounds(clock, nodes, 3)
    before = nodes["n1"].state
    with pytest.raises(MembershipError, match="no share"):
        nodes["n1"].service.handle_join(["n5", "h5:7000", "h5:8000"])
    with pytest.raises(MembershipError, match="bad address"):
        nodes["n1"].service.handle_join(["n5", "nowhere", "h5:8000"])
    assert nodes["n1"].state == before


def test_a_failing_round_is_logged_and_the_schedule_goes_on():
    network, clock, nodes = make_nodes(3)
    node = nodes["n1"]

    def broken() -> int:
        raise OSError("disk full")

    node.service.pending = broken
    with capturedLogs() as logs:
        node.service.round()
    assert any("gossip round failed" in event["log_format"] for event in logs)
    node.service.pending = lambda: 0
    node.service.round()
    assert node.service.stats["rounds"] == 2 and node.state.progress["n1"].pending == 0


def test_a_joiner_asks_again_once_when_the_seeds_answer_does_not_come():
    from twisted.internet import defer

    from dynamod.net.operations import PeerTimeout
    from dynamod.node import JOIN_ATTEMPTS, ask_to_join
    from tests.sim import fired

    class Seed:
        def __init__(self, timeouts: int):
            self.timeouts, self.calls = timeouts, 0

        def call(self, op, payload, timeout):
            self.calls += 1
            if self.calls <= self.timeouts:
                return defer.fail(PeerTimeout(f"no answer within {timeout}s"))
            return defer.succeed({"state": "answered"})

    once = Seed(timeouts=1)
    assert fired(ask_to_join(once, "h1:7000", ["n4"], False, 1.0)) == {"state": "answered"} and once.calls == 2
    never = Seed(timeouts=JOIN_ATTEMPTS)
    with pytest.raises(MembershipError, match=f"did not answer the join \\({JOIN_ATTEMPTS} tries; no answer"):
        fired(ask_to_join(never, "h1:7000", ["n4"], False, 1.0))
    assert never.calls == JOIN_ATTEMPTS
