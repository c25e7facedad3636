"""Generators simulated without threads or sleeps: seeded schedules replay, rates and time limits hold,
phases never overlap, the nemesis alternates start and stop, and info ops retire their process."""

from __future__ import annotations

import random

from dynacheck.generator import (
    SECOND,
    ClientOps,
    Concurrently,
    Context,
    FaultCycle,
    Once,
    Pending,
    Phases,
    Sleep,
    Stagger,
    TimeLimit,
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


def test_the_fault_cycle_alternates_start_and_stop_on_schedule():
    rng = random.Random(9)
    cycle = FaultCycle(lambda r: (r.choice(["partition", "kill"]), {"n": r.randint(0, 9)}), rng,
                       interval_ns=5 * SECOND, duration_ns=3 * SECOND)
    history = simulate(Concurrently(cart_ops(6, rate=20, limit=30), TimeLimit(30 * SECOND, cycle)), 2,
                       fixed_latency)
    nemesis = [op for op in history if op["process"] == "nemesis" and op["type"] == "invoke"]
    assert [op["f"].split("-")[0] for op in nemesis] == ["start", "stop"] * (len(nemesis) // 2) + \
        (["start"] if len(nemesis) % 2 else [])
    assert len(nemesis) >= 6
    for start, stop in zip(nemesis[::2], nemesis[1::2], strict=False):
        assert stop["f"] == "stop-" + start["f"].removeprefix("start-")
        assert stop["value"] == start["value"]
        assert stop["time"] - start["time"] >= 3 * SECOND


def test_the_first_fault_waits_one_interval_and_the_stop_carries_the_same_plan():
    cycle = FaultCycle(lambda r: ("clock", {"offsets": {"n1": 1.0}}), random.Random(1), SECOND, 100 * SECOND)
    start = cycle.op(Context(time=0, free=("nemesis",)))
    assert start["f"] == "start-clock" and start["time"] == SECOND
    assert cycle.op(Context(time=SECOND, free=(0,))) == Pending()  # the nemesis is busy
    stop = cycle.op(Context(time=2 * SECOND, free=("nemesis",)))
    assert stop == {"f": "stop-clock", "value": {"offsets": {"n1": 1.0}}, "thread": "nemesis",
                    "time": 102 * SECOND}


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
