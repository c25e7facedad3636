"""Whether a fault took effect (issue 16: a fault that cannot take effect is reported as such, never
as ok): the pure judgements, the nemeses checking on fake nodes under a fake clock (no processes),
and how a fault without effect shows in the faults checker and the run's summary."""

from __future__ import annotations

import contextlib
import re

import attrs
import pytest

from dynacheck.checkers import faults
from dynacheck.cli import summary_rows
from dynacheck.db import Cluster
from dynacheck.nemesis import completion, not_undone
from dynacheck.nemesis.clock import ClockFault
from dynacheck.nemesis.effect import (
    CLOCK_SETTLE_SECONDS,
    CLOCK_TOLERANCE,
    PROBE_TIMEOUT,
    ClockSample,
    Observer,
    judge_clock,
    judge_paused,
    judge_stayed_down,
)
from dynacheck.nemesis.process import KillFault, PauseFault
from dynacheck.nemesis.storage import DataLoss, DiskFault, Skipped
from dynacheck.synthetic import HistoryBuilder
from dynactl.inventory import Host
from dynactl.remote import HostResult
from dynamod.client import NodeUnavailable

# -- the judgements -------------------------------------------------------------------------------


def test_a_clock_at_its_planned_offset_took_effect_and_says_what_was_seen():
    effect = judge_clock(ClockSample(offset=12.5008, uncertainty=0.001), planned=12.5, previous=0.0)
    assert effect.took is True
    assert effect.document() == {"took_effect": True, "effect_of": "start", "reason": effect.reason,
                                 "planned": 12.5, "observed": 12.501, "tolerance": 0.006, "round_trip": 0.002}
    assert effect.reason == "wall clock +12.501 s off, planned +12.500 s"


def test_a_clock_that_did_not_move_had_no_effect():
    effect = judge_clock(ClockSample(offset=0.0004, uncertainty=0.001), planned=-0.25, previous=0.0)
    assert effect.took is False
    assert effect.reason == "wall clock +0.000 s off, planned -0.250 s (beyond ±6 ms, still at +0.000 s)"


def test_the_tolerance_is_the_rounding_allowance_plus_half_of_each_round_trip():
    sample_slack, baseline_slack = 0.003, 0.002
    tolerance = CLOCK_TOLERANCE + sample_slack + baseline_slack
    baseline = ClockSample(offset=0.0, uncertainty=baseline_slack)
    inside = judge_clock(ClockSample(1.0 + tolerance - 1e-6, sample_slack), 1.0, 0.0, baseline)
    outside = judge_clock(ClockSample(1.0 + tolerance + 1e-4, sample_slack), 1.0, 0.0, baseline)
    assert (inside.took, outside.took) == (True, False)


def test_a_host_whose_own_clock_differs_is_judged_from_its_baseline():
    baseline = ClockSample(offset=0.040, uncertainty=0.0005)  # its clock runs 40 ms ahead of the checker's
    moved = judge_clock(ClockSample(offset=0.060, uncertainty=0.0005), planned=0.02, previous=0.0, baseline=baseline)
    assert moved.took is True and moved.figures["host_clock"] == 0.04 and moved.figures["observed"] == 0.02
    assert judge_clock(ClockSample(offset=0.040, uncertainty=0.0005), 0.02, 0.0, baseline).took is False


def test_a_small_bump_read_over_a_slow_round_trip_cannot_be_told_from_no_change():
    effect = judge_clock(ClockSample(offset=0.011, uncertainty=0.020), planned=0.011, previous=0.0)
    assert effect.took is None and "cannot tell" in effect.reason


def test_a_reset_back_to_zero_is_judged_as_the_stops_effect():
    assert judge_clock(ClockSample(0.0, 0.001), 0.0, 12.5, effect_of="stop").document()["effect_of"] == "stop"
    stuck = judge_clock(ClockSample(12.5, 0.001), 0.0, 12.5, effect_of="stop")
    assert stuck.took is False and "still at +12.500 s" in stuck.reason


def test_a_killed_node_that_answers_again_was_restarted_by_something_else_after_its_downtime():
    effect = judge_stayed_down(5.0, {"uptime": 3.0}, running=True, running_detail="running pid 9")
    assert effect.took is False
    assert effect.reason == "restarted by something else after 2.0 s (answering again, up 3.0 s)"
    assert effect.figures == {"down_for": 5.0, "stayed_down": False, "back_after": 2.0}


def test_a_killed_node_whose_process_runs_again_counts_as_restarted_even_before_it_answers():
    effect = judge_stayed_down(1.5, "n2 did not answer (refused)", running=True, running_detail="running pid 9")
    assert effect.took is False and "its process runs again: running pid 9" in effect.reason


def test_a_killed_node_silent_and_not_running_stayed_down():
    assert judge_stayed_down(4.0, "refused", running=False).reason == "stayed down 4.0 s (not answering)"
    unsure = judge_stayed_down(4.0, "refused", running=None, running_detail="unreachable")
    assert unsure.took is True and "could not tell: unreachable" in unsure.reason


def test_a_paused_node_must_stay_silent():
    assert judge_paused("n1 did not answer (timed out)", 1.0).took is True
    assert judge_paused({"uptime": 7.0}, 1.0).took is False


# -- fake nodes under a fake clock ------------------------------------------------------------------


class World:
    """The time the checker and the nodes share: a status request takes ``round_trip`` seconds and the
    node reads its wall clock halfway; sleeping just moves the clock."""

    def __init__(self, round_trip: float = 0.002):
        self.now, self.wall, self.round_trip = 100.0, 1_700_000_000.0, round_trip

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.wall += seconds

    def observer(self, cluster: Cluster) -> Observer:
        return Observer(cluster, clock=lambda: self.now, wall_clock=lambda: self.wall, sleep=self.advance)


@attrs.define
class FakeNode:
    """One node: running or not, paused or not, what its clock file says and whether its clock
    follows it (``hooked``: libfaketime loaded), and a supervisor that restarts it after a kill."""

    world: World
    name: str
    running: bool = True
    paused: bool = False
    started_at: float = 0.0
    file: float = 0.0
    hooked: bool = True
    file_writable: bool = True
    host_clock: float = 0.0
    supervisor_restarts_after: float | None = None
    ignores_sigstop: bool = False
    killed_at: float | None = None

    def settle(self) -> None:
        """What happened by now without the checker: a supervisor's restart."""
        if not self.running and self.supervisor_restarts_after is not None and self.killed_at is not None \
                and self.world.now >= self.killed_at + self.supervisor_restarts_after:
            self.running, self.started_at = True, self.killed_at + self.supervisor_restarts_after


class FakeClient:
    def __init__(self, node: FakeNode, timeout: float):
        self.node, self.timeout = node, timeout

    def status(self) -> dict:
        node, world = self.node, self.node.world
        node.settle()
        if not node.running:
            raise NodeUnavailable(f"{node.name}: connection refused")
        if node.paused:
            world.advance(self.timeout)
            raise NodeUnavailable(f"{node.name}: timed out")
        world.advance(world.round_trip / 2)
        wall_clock = world.wall + node.host_clock + (node.file if node.hooked else 0.0)
        world.advance(world.round_trip / 2)
        return {"uptime": round(world.now - node.started_at, 3), "wall_clock": round(wall_clock, 3)}

    def close(self) -> None:
        pass


class FakeCluster:
    """The part of ``dynacheck.db.Cluster`` the nemeses use, over fake nodes."""

    statuses = Cluster.statuses  # the real one, over the fake clients

    def __init__(self, world: World, names: tuple[str, ...] = ("n1", "n2", "n3")):
        self.world = world
        self.nodes = {name: FakeNode(world, name, started_at=world.now) for name in names}
        self.calls: list[tuple[str, list[str]]] = []

    @property
    def ids(self) -> list[str]:
        return list(self.nodes)

    @contextlib.contextmanager
    def clients(self, timeout: float):
        yield {name: FakeClient(node, timeout) for name, node in self.nodes.items()}

    def service(self, action: str, nodes: list[str] | None = None) -> dict[str, HostResult]:
        chosen = self.ids if nodes is None else nodes
        self.calls.append((action, list(chosen)))
        return {name: self._act(action, self.nodes[name]) for name in chosen}

    def _act(self, action: str, node: FakeNode) -> HostResult:
        node.settle()
        if action == "status":
            if node.running:
                return HostResult(node.name, ok=True, exit_code=0, stdout="running pid 7\n")
            return HostResult(node.name, ok=False, exit_code=1, error="`dynactl service status` exited 1: not running")
        if action == "kill":
            node.running, node.killed_at = False, self.world.now
        elif action == "start" and not node.running:
            node.running, node.started_at = True, self.world.now
        elif action == "start":
            return HostResult(node.name, ok=True, exit_code=0, stdout="already running pid 7\n")
        elif action in ("pause", "resume"):
            node.paused = action == "pause" and not node.ignores_sigstop
        return HostResult(node.name, ok=True, exit_code=0, stdout=f"{action} done\n")

    def faketime_file(self, host: Host) -> str:
        return f"/fake/{host.name}/clock"

    def _write(self, name: str, offset: float) -> HostResult:
        if self.nodes[name].file_writable:
            self.nodes[name].file = offset
        return HostResult(name, ok=True, exit_code=0)

    def set_clock_offsets(self, offsets: dict[str, float]) -> dict[str, HostResult]:
        return {name: self._write(name, offset) for name, offset in offsets.items()}

    def run(self, command, nodes: list[str] | None = None, timeout: float | None = 60.0) -> dict[str, HostResult]:
        """A strobe ends by writing its offset: that is what the fake keeps; other commands just succeed."""
        results = {}
        for name in self.ids if nodes is None else nodes:
            host = Host(name=name, address="127.0.0.1", vars={"dynamod_data_dir": f"/fake/{name}/data"})
            last = re.findall(r"printf '%\+\.3f\\n' (\S+) > ", command(host))
            results[name] = self._write(name, float(last[-1])) if last else HostResult(name, ok=True, exit_code=0)
        return results


@pytest.fixture
def world() -> World:
    return World()


@pytest.fixture
def cluster(world: World) -> FakeCluster:
    return FakeCluster(world)


def clock_fault(cluster: FakeCluster) -> ClockFault:
    fault = ClockFault(cluster, cluster.world.observer(cluster))
    assert all(result.ok for result in fault.setup().values())
    return fault


BUMP = {"id": 3, "mode": "bump", "offsets": {"n1": 12.5, "n2": -0.25}}

# -- the clock nemesis ------------------------------------------------------------------------------


def test_a_bump_records_each_nodes_observed_offset(cluster):
    fields = completion(BUMP, clock_fault(cluster).start(BUMP))
    assert fields["type"] == "ok" and "error" not in fields
    effect = fields["value"]["effect"]
    assert set(effect) == {"n1", "n2"}
    assert effect["n1"]["took_effect"] is True and effect["n1"]["observed"] == pytest.approx(12.5, abs=0.001)
    assert effect["n2"]["planned"] == -0.25 and effect["n2"]["observed"] == pytest.approx(-0.25, abs=0.001)


def test_a_bump_on_a_node_whose_clock_hook_is_missing_is_that_nodes_failed_result(cluster, world):
    cluster.nodes["n2"].hooked = False  # e.g. a systemd unit started without the faketime drop-in
    fault = clock_fault(cluster)
    began = world.now
    results = fault.start(BUMP)
    assert results["n1"].ok and not results["n2"].ok
    # ±7 ms: 5 ms of rounding and drift, half of this reading's 2 ms round trip and of the baseline's.
    assert results["n2"].error == ("no effect: wall clock +0.000 s off, planned -0.250 s "
                                   "(beyond ±7 ms, still at +0.000 s)")
    assert world.now - began >= CLOCK_SETTLE_SECONDS  # it polled until the deadline before judging
    fields = completion(BUMP, results)
    assert fields["type"] == "info" and fields["error"].startswith("n2: no effect: wall clock")
    assert fields["value"]["nodes"]["n2"].startswith("no effect")
    assert fields["value"]["effect"]["n2"]["took_effect"] is False


def test_a_strobe_is_checked_on_the_offset_it_leaves(cluster):
    plan = {"id": 4, "mode": "strobe", "nodes": ["n3"], "delta": 2.5, "period_ms": 50, "duration": 1}
    fields = completion(plan, clock_fault(cluster).start(plan))
    assert fields["type"] == "ok"
    assert fields["value"]["effect"]["n3"]["observed"] == pytest.approx(2.5, abs=0.001)


def test_a_stop_checks_every_clock_is_back_at_zero(cluster):
    fault = clock_fault(cluster)
    fault.start(BUMP)
    healed = fault.stop(BUMP)
    assert all(result.ok for result in healed.values()) and not_undone(healed) == []
    assert {result.effect.effect_of for result in healed.values()} == {"stop"}
    fault.start(BUMP)
    cluster.nodes["n1"].file_writable = False  # something keeps the file at its offset
    stuck = fault.heal()
    assert not stuck["n1"].ok and "still at +12.500 s" in stuck["n1"].error
    assert not_undone(stuck) == [stuck["n1"].line()]  # the heal did not undo it: a problem of the run


def test_a_host_clock_ahead_of_the_checkers_is_measured_at_set_up_and_taken_off(cluster):
    cluster.nodes["n1"].host_clock = 0.3
    plan = {"id": 5, "mode": "bump", "offsets": {"n1": 0.02}}
    results = clock_fault(cluster).start(plan)
    assert results["n1"].ok and results["n1"].effect.figures["host_clock"] == 0.3


def test_a_node_that_cannot_be_read_is_recorded_as_not_seen_and_keeps_its_result(cluster):
    fault = clock_fault_without(cluster, "n2")  # a kill holds it while the clock moves
    began = cluster.world.now
    results = fault.start(BUMP)
    assert results["n2"].ok and results["n2"].effect.took is None
    assert "did not answer" in results["n2"].effect.reason
    assert cluster.world.now - began < 0.1  # not waited for: the schedule goes on


def clock_fault_without(cluster: FakeCluster, down: str) -> ClockFault:
    """A clock fault set up while ``down`` still ran."""
    cluster.nodes[down].running = True
    fault = clock_fault(cluster)
    cluster.nodes[down].running = False
    return fault


def test_set_up_fails_for_a_node_that_reports_no_clock(cluster):
    cluster.nodes["n3"].running = False
    results = ClockFault(cluster, cluster.world.observer(cluster)).setup()
    assert not results["n3"].ok and results["n3"].error.startswith("reading its wall clock: did not answer")


# -- kill and pause ---------------------------------------------------------------------------------


def test_a_killed_node_that_stayed_down_is_recorded_before_it_is_started(cluster, world):
    fault = KillFault(cluster, world.observer(cluster))
    plan = {"id": 1, "nodes": ["n2"]}
    assert completion(plan, fault.start(plan))["type"] == "ok"
    world.advance(3.0)
    results = fault.stop(plan)
    fields = completion(plan, results)
    assert fields["type"] == "ok"
    assert fields["value"]["effect"]["n2"]["took_effect"] is True
    assert fields["value"]["effect"]["n2"]["down_for"] == pytest.approx(3.0, abs=0.01)
    assert [action for action, _ in cluster.calls] == ["kill", "status", "start"]  # looked before starting


def test_a_killed_node_something_else_restarted_is_not_ok_with_when(cluster, world):
    cluster.nodes["n2"].supervisor_restarts_after = 1.5
    fault = KillFault(cluster, world.observer(cluster))
    plan = {"id": 1, "nodes": ["n2"]}
    fault.start(plan)
    world.advance(4.0)
    results = fault.stop(plan)
    assert not results["n2"].ok
    assert results["n2"].error.startswith("no effect: restarted by something else after 1.5 s")
    assert completion(plan, results)["type"] == "info"
    assert not_undone(results) == []  # the stop did its part: the node runs


def test_the_heal_checks_only_the_nodes_still_killed(cluster, world):
    fault = KillFault(cluster, world.observer(cluster))
    fault.start({"id": 1, "nodes": ["n3"]})
    healed = fault.heal()
    assert set(healed) == {"n1", "n2", "n3"} and healed["n3"].effect.took is True
    assert not hasattr(healed["n1"], "effect")
    assert set(fault.heal()) == {"n1", "n2", "n3"} and fault.down.killed_at == {}


def test_a_lost_disk_checks_that_its_node_stayed_down_too(cluster, world):
    cluster.nodes["n1"].supervisor_restarts_after = 0.5
    fault = DiskFault(cluster, DataLoss(cluster, 2), world.observer(cluster))
    fault.start({"id": 2, "nodes": ["n1"]})
    world.advance(2.0)
    assert "restarted by something else" in fault.stop({"id": 2, "nodes": ["n1"]})["n1"].error


def test_a_paused_node_that_still_answers_is_not_ok(cluster, world):
    cluster.nodes["n1"].ignores_sigstop = True
    fault = PauseFault(cluster, world.observer(cluster))
    results = fault.start({"id": 6, "nodes": ["n1", "n2"]})
    assert not results["n1"].ok and results["n1"].error.startswith("no effect: answered /admin/status while paused")
    assert results["n2"].ok and results["n2"].effect.reason.startswith(f"silent for {PROBE_TIMEOUT:g} s")


# -- in the faults checker and the run's summary ------------------------------------------------------


def effect_on(history: list[dict], f: str, effect: dict, outcome: str | None = None) -> list[dict]:
    """``history`` with the completion of ``f`` carrying ``effect`` (what the runner records)."""
    completion_op = next(op for op in history if op["f"] == f and op["type"] != "invoke")
    completion_op["value"] = {**(completion_op["value"] or {}), "effect": effect}
    if outcome:
        completion_op["type"], completion_op["error"] = outcome, "; ".join(
            f"{node}: no effect: {seen['reason']}" for node, seen in effect.items() if seen["took_effect"] is False)
    return history


NO_MOVE = {"took_effect": False, "effect_of": "start", "reason": "wall clock +0.000 s off, planned +12.500 s"}


def test_a_clock_fault_without_effect_is_its_own_status_counted_and_warned_about():
    h = HistoryBuilder()
    h.nemesis("start-clock", 0, 1, value={"id": 0, "mode": "bump", "offsets": {"n1": 12.5}})
    h.nemesis("stop-clock", 10, 11, value={"id": 0})
    history = effect_on(h.history(), "start-clock", {"n1": NO_MOVE}, outcome="info")
    schedule = [{"id": 0, "fault": "clock", "start": 0, "stop": 10_000_000, "plan": {"id": 0}}]
    result = faults.check({"fault_schedule": schedule, "nemesis": ["clock"]}, history, None)
    [row] = result["faults"]
    assert row["status"] == "no_effect" and row["no_effect"] == {"n1": NO_MOVE["reason"]}
    assert result["no_effect_count"] == 1 and result["by_kind"]["clock"]["no_effect"] == 1
    assert "1 faults had no effect on some node, so the run did not test them there: clock (id 0) n1: wall clock " \
           "+0.000 s off, planned +12.500 s" in result["warnings"]
    assert any(w.startswith("no planned clock fault took effect, so the run did not test it")
               for w in result["warnings"])
    assert not any("never ran" in w for w in result["warnings"])
    [(_, verdict, evidence)] = summary_rows({"checkers": {"faults": result}})
    assert verdict == "valid" and "no effect 1" in evidence  # shown in the table dynacheck run prints


def test_a_kill_found_undone_at_its_stop_is_the_faults_finding_for_its_nodes_only():
    h = HistoryBuilder()
    h.nemesis("start-kill", 0, 1, value={"id": 0, "nodes": ["n2"]})
    h.nemesis("stop-kill", 10, 11, value={"id": 0, "nodes": ["n2"]})
    back = {"took_effect": False, "effect_of": "start", "reason": "restarted by something else after 1.5 s"}
    history = effect_on(h.history(), "stop-kill", {"n2": back, "n9": back})
    [row] = faults.check({}, history, None)["faults"]
    assert row["status"] == "no_effect" and row["no_effect"] == {"n2": back["reason"]}


def test_stops_without_effect_and_unverified_nodes_are_counted_and_warned_about():
    h = HistoryBuilder()
    h.nemesis("start-clock", 0, 1, value={"id": 0, "mode": "bump", "offsets": {"n1": 1.0}})
    h.nemesis("stop-clock", 10, 11, value={"id": 0})
    h.nemesis("stop-clock", 20, 21, value="heal")
    history = effect_on(h.history(), "start-clock", {"n1": {"took_effect": None, "effect_of": "start",
                                                            "reason": "wall clock not read: did not answer"}})
    stuck = {"took_effect": False, "effect_of": "stop", "reason": "wall clock +1.000 s off, planned +0.000 s"}
    history = effect_on(history, "stop-clock", {"n1": stuck}, outcome="info")
    result = faults.check({}, history, None)
    [row] = result["faults"]
    assert row["status"] == "ran" and row["stopped_by"] == "heal"  # the failed stop left it active until the heal
    assert (result["unverified_count"], result["stops_without_effect_count"]) == (1, 1)
    assert any(w.startswith("1 faults were stopped without effect on some node") for w in result["warnings"])
    assert any(w.startswith("1 faults could not be checked on some node: clock (id 0) n1: wall clock not read")
               for w in result["warnings"])


def test_with_w_1_a_lost_disk_is_skipped_before_anything_is_done(cluster, world):
    """A write acknowledged by one node may be on that node alone: losing its disk would lose it."""
    fault = DiskFault(cluster, DataLoss(cluster, 1), world.observer(cluster))
    with pytest.raises(Skipped, match="W=1"):
        fault.start({"id": 2, "nodes": ["n1"]})
    assert fault.down.killed_at == {}
