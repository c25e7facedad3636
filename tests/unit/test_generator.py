"""Generators simulated without threads or sleeps: seeded schedules replay, rates and time limits hold,
phases never overlap, fault schedules overlap kinds but never one kind or too many nodes, and info ops
retire their process."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from dynacheck.generator import (
    SECOND,
    ClientOps,
    Concurrently,
    Context,
    FaultSchedule,
    Once,
    Pending,
    Phases,
    PlannedFault,
    Sleep,
    Stagger,
    TimeLimit,
    plan_schedule,
)
from dynacheck.history import pairs
from dynacheck.interpreter import simulate
from dynacheck.workloads import workload

MS = 1_000_000


def cart_ops(seed: int, rate: float = 100.0, limit: float = 10.0) -> TimeLimit:
    rng = random.Random(seed)
    return TimeLimit(int(limit * SECOND), Stagger(int(SECOND / rate), ClientOps(workload("cart", 3).make, rng), rng))


def fixed_latency(op, rng) -> int:
    return 5 * MS


def strip(history):
    return [(op["time"], op["process"], op["type"], op["f"], op.get("key"), op.get("value")) for op in history]


def test_the_same_seed_replays_the_same_history():
    first = simulate(cart_ops(7), 5, lambda op, rng: rng.randint(1, 20) * MS, seed=3, nemesis=False)
    second = simulate(cart_ops(7), 5, lambda op, rng: rng.randint(1, 20) * MS, seed=3, nemesis=False)
    other = simulate(cart_ops(8), 5, lambda op, rng: rng.randint(1, 20) * MS, seed=3, nemesis=False)
    assert strip(first) == strip(second)
    assert strip(first) != strip(other)


def test_stagger_holds_the_mean_rate_and_the_time_limit_ends_the_run():
    history = simulate(cart_ops(1, rate=100, limit=10), 10, fixed_latency, nemesis=False)
    invokes = [op for op in history if op["type"] == "invoke"]
    assert 850 <= len(invokes) <= 1150  # 100/s for 10 s, random gaps
    assert max(op["time"] for op in invokes) < 10 * SECOND


def test_a_process_never_has_two_ops_open():
    history = simulate(cart_ops(2, rate=1000, limit=2), 4, lambda op, rng: rng.randint(1, 50) * MS, nemesis=False)
    open_by_process: dict = {}
    for op in history:
        if op["type"] == "invoke":
            assert op["process"] not in open_by_process
            open_by_process[op["process"]] = op
        else:
            del open_by_process[op["process"]]
    assert not open_by_process


def test_an_info_op_retires_its_process_and_the_thread_continues_as_a_new_one():
    def outcome(op, rng):
        return {"type": "info"} if op["f"] == "add" and rng.random() < 0.3 else {"type": "ok"}
    history = simulate(cart_ops(4, rate=200, limit=3), 3, fixed_latency, outcome, nemesis=False)
    infos = [op for op in history if op["type"] == "info"]
    assert infos
    for info in infos:
        later = [op for op in history if op["index"] > info["index"] and op["process"] == info["process"]]
        assert later == []
    assert max(op["process"] for op in history) >= 3


def test_phases_wait_for_every_op_of_the_previous_phase():
    final = Once([{"f": "read", "key": "cart-0", "value": None, "final": True} for _ in range(6)])
    history = simulate(Phases(cart_ops(5, rate=500, limit=1), final), 3, lambda op, rng: rng.randint(1, 90) * MS,
                       nemesis=False)
    last_main_completion = max(op["time"] for op in history if op["type"] != "invoke" and not op.get("final"))
    final_invokes = [op for op in history if op["type"] == "invoke" and op.get("final")]
    assert len(final_invokes) == 6
    assert min(op["time"] for op in final_invokes) >= last_main_completion


NODES = ["n1", "n2", "n3", "n4", "n5"]
KINDS = ["partition", "clock", "kill", "pause", "disk"]
TAKES_NODES = {"kill", "pause", "disk", "power"}


def plan_for_test(kind, rng, held):
    if kind not in TAKES_NODES:
        return {"mode": rng.choice(["a", "b"])}, set()
    free = [node for node in NODES if node not in held] or NODES
    nodes = sorted(rng.sample(free, rng.randint(1, min(2, len(free)))))
    return {"nodes": nodes}, set(nodes)


def schedule(seed, limit=120, interval=4.0, duration=5.0, held_limit=2):
    return plan_schedule(KINDS, plan_for_test, random.Random(seed), limit * SECOND, int(interval * SECOND),
                         int(duration * SECOND), held_limit)


@given(st.integers(0, 10_000))
def test_a_fault_schedule_replays_from_its_seed_and_keeps_each_kind_and_the_nodes_apart(seed):
    planned = schedule(seed)
    assert planned == schedule(seed)
    assert all(0 < fault.start < fault.stop <= 120 * SECOND for fault in planned)
    events = sorted({fault.start for fault in planned})
    for moment in events:
        active = [fault for fault in planned if fault.start <= moment < fault.stop]
        kinds = [fault.fault for fault in active]
        assert len(kinds) == len(set(kinds)), f"two faults of one kind at once: {active}"
        held = [node for fault in active if fault.fault in TAKES_NODES for node in fault.plan["nodes"]]
        assert len(held) == len(set(held)) and len(held) <= 2, f"nodes taken twice or too many: {active}"


def test_schedules_meet_every_kind_and_overlap_and_flap():
    overlapping = flapping = 0
    for seed in range(20):
        planned = schedule(seed)
        assert {fault.fault for fault in planned} == set(KINDS)
        overlapping += any(a.start < b.start < a.stop for a in planned for b in planned if a.id != b.id)
        flapping += any(a.fault == b.fault and 0 < b.start - a.stop <= SECOND for a in planned for b in planned)
    assert overlapping >= 15 and flapping >= 5


def test_a_flap_repeats_a_fault_without_costing_its_round_a_kind():
    # A flap used to take the round's next kind and replay the previous one instead, so that kind
    # was gone until the next round: 23 of 300 80-second schedules missed a kind (0 now).
    missing = [seed for seed in range(300) if {fault.fault for fault in schedule(seed, limit=80)} != set(KINDS)]
    assert missing == []


def test_the_fault_schedule_plays_each_start_then_its_stop_with_the_planned_id():
    planned = [PlannedFault(0, "partition", 2 * SECOND, 6 * SECOND, {"mode": "halves"}),
               PlannedFault(1, "kill", 3 * SECOND, 4 * SECOND, {"nodes": ["n1"]})]
    history = simulate(Concurrently(cart_ops(6, rate=20, limit=10), TimeLimit(10 * SECOND, FaultSchedule(planned))),
                       2, fixed_latency)
    nemesis = [(op["f"], op["value"]["id"], op["time"] // SECOND) for op in history
               if op["process"] == "nemesis" and op["type"] == "invoke"]
    assert nemesis == [("start-partition", 0, 2), ("start-kill", 1, 3), ("stop-kill", 1, 4),
                       ("stop-partition", 0, 6)]


def test_a_start_delayed_by_a_slow_nemesis_op_keeps_its_planned_duration():
    planned = [PlannedFault(0, "kill", SECOND, 2 * SECOND, {"nodes": ["n1"]}),
               PlannedFault(1, "pause", SECOND + 1, 3 * SECOND, {"nodes": ["n2"]})]
    generator = FaultSchedule(planned)
    first = generator.op(Context(time=SECOND, free=("nemesis",)))
    assert first["f"] == "start-kill"
    assert generator.op(Context(time=SECOND, free=(0,))) == Pending()  # the nemesis is busy
    late = generator.op(Context(time=5 * SECOND, free=("nemesis",)))  # the kill took 4 s
    assert late["f"] == "start-pause" and late["time"] == 5 * SECOND
    assert generator.op(Context(time=5 * SECOND, free=("nemesis",)))["f"] == "stop-kill"
    assert generator.op(Context(time=5 * SECOND, free=("nemesis",))) == Pending(5 * SECOND + 2 * SECOND - 1)


def test_sleep_and_time_limit_report_when_to_wake():
    sleep = Sleep(2 * SECOND)
    assert sleep.op(Context(time=SECOND, free=(0,))) == Pending(3 * SECOND)
    assert sleep.op(Context(time=3 * SECOND, free=(0,))) is None
    limited = TimeLimit(SECOND, Once([]))
    assert limited.op(Context(time=0, free=(0,))) is None


def test_every_invoke_completes_and_pairs_line_up():
    history = simulate(cart_ops(11, rate=300, limit=2), 6, lambda op, rng: rng.randint(1, 30) * MS, nemesis=False)
    for invoke, completion in pairs(history):
        assert completion is not None
        assert completion["f"] == invoke["f"] and completion["key"] == invoke["key"]
        assert completion["time"] >= invoke["time"]


def test_a_late_start_never_overlaps_a_fault_of_its_kind_or_on_its_nodes():
    planned = [PlannedFault(0, "pause", SECOND, 2 * SECOND, {"nodes": ["n2"]}),
               PlannedFault(1, "pause", 3 * SECOND, 4 * SECOND, {"nodes": ["n3"]}),
               PlannedFault(2, "kill", 3 * SECOND, 5 * SECOND, {"nodes": ["n2"]})]
    generator = FaultSchedule(planned)
    # The nemesis was busy until 2.5 s: the first pause starts late and keeps its 1 s, to 3.5 s, so
    # the second pause and the kill of the same node (both due at 3 s) wait for its stop.
    assert generator.op(Context(time=2 * SECOND + SECOND // 2, free=("nemesis",)))["f"] == "start-pause"
    assert generator.op(Context(time=3 * SECOND, free=("nemesis",))) == Pending(3 * SECOND + SECOND // 2)
    ops = [generator.op(Context(time=3 * SECOND + SECOND // 2, free=("nemesis",))) for _ in range(3)]
    assert [(op["f"], op["value"]["id"]) for op in ops] == [("stop-pause", 0), ("start-pause", 1), ("start-kill", 2)]


@given(st.integers(0, 3_000))
def test_a_whole_cluster_outage_only_ever_runs_alone(seed):
    def plan(kind, rng, held):
        if kind == "power" and rng.random() < 0.5:
            return {"nodes": NODES}, set(NODES)
        return plan_for_test(kind, rng, held)
    planned = plan_schedule(KINDS + ["power"], plan, random.Random(seed), 90 * SECOND, 3 * SECOND, 4 * SECOND, 2)
    everything = [fault for fault in planned if fault.fault == "power" and len(fault.plan["nodes"]) == len(NODES)]
    for outage in everything:
        for other in planned:
            if other.id != outage.id and other.start < outage.stop and outage.start < other.stop:
                assert not other.plan.get("nodes"), (outage, other)
