"""Admission control for background work over scripted times and latencies (no clock, no sleeps)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from dynamod.core.admission import AdmissionControl

# Float arithmetic in the bucket may drift by a few ulps; the bounds below allow for that and no more.
EPSILON = 1e-9


def drive_slow(control: AdmissionControl, steps: int, latency: float) -> None:
    for _ in range(steps):
        control.observe_latency(latency)
        control.adjust()


# --- token bucket --------------------------------------------------------------------------------


def test_the_bucket_starts_full_and_then_defers():
    control = AdmissionControl(rate=5.0, latency_target=0.1)
    assert [control.try_acquire(0.0) for _ in range(7)] == [True] * 5 + [False] * 2
    assert (control.admitted, control.deferred) == (5, 2)


def test_burst_defaults_to_at_least_one_token():
    slow = AdmissionControl(rate=0.25, latency_target=0.1)
    assert slow.burst == 1.0
    assert slow.try_acquire(0.0)
    assert not slow.try_acquire(0.0)
    assert AdmissionControl(rate=20.0, latency_target=0.1).burst == 20.0


def test_tokens_refill_at_the_rate():
    control = AdmissionControl(rate=2.0, latency_target=0.1, burst=1.0)
    assert control.try_acquire(10.0)
    assert not control.try_acquire(10.4)  # 0.8 tokens
    assert control.try_acquire(10.5)  # 0.8 + 0.2 = 1.0
    assert not control.try_acquire(10.5)


def test_refill_is_capped_at_burst_after_a_long_idle():
    control = AdmissionControl(rate=10.0, latency_target=0.1, burst=3.0)
    for _ in range(3):
        assert control.try_acquire(0.0)
    admitted = [control.try_acquire(1000.0) for _ in range(5)]
    assert admitted == [True, True, True, False, False]


def test_cost_takes_that_many_tokens_and_a_cost_above_burst_never_fits():
    control = AdmissionControl(rate=4.0, latency_target=0.1)
    assert control.try_acquire(0.0, cost=3.0)
    assert not control.try_acquire(0.0, cost=2.0)
    assert control.try_acquire(0.0, cost=1.0)
    assert not control.try_acquire(1e6, cost=4.5)
    assert control.try_acquire(1e6, cost=4.0)


def test_a_zero_cost_operation_is_always_admitted():
    control = AdmissionControl(rate=1.0, latency_target=0.1)
    assert control.try_acquire(0.0)
    assert control.try_acquire(0.0, cost=0.0)
    assert control.admitted == 2


def test_the_refill_follows_the_reduced_rate():
    control = AdmissionControl(rate=10.0, latency_target=0.1, burst=1.0, decrease=0.5)
    assert control.try_acquire(0.0)
    drive_slow(control, 1, latency=1.0)
    assert control.current_rate == 5.0
    assert not control.try_acquire(0.1)  # 0.5 tokens at the halved rate; 1.0 at the full one
    assert control.try_acquire(0.2)


def test_time_going_backwards_creates_no_tokens():
    control = AdmissionControl(rate=1.0, latency_target=0.1, burst=1.0)
    assert control.try_acquire(100.0)
    assert not control.try_acquire(50.0)
    assert not control.try_acquire(-1e9)
    # Back at 100.5 after the detour: only 0.5 s has passed since the newest time seen, not 50 s.
    assert not control.try_acquire(100.5)
    assert control.try_acquire(101.0)
    assert (control.admitted, control.deferred) == (2, 3)


@given(
    st.lists(
        st.tuples(st.floats(min_value=-100.0, max_value=100.0), st.floats(min_value=0.0, max_value=5.0)),
        max_size=40,
    )
)
def test_going_back_in_time_admits_no_more_than_staying_put(requests):
    """A backwards step must act exactly like no time passing: replaying the times clamped to the
    newest time seen so far gives the same decisions."""
    forward = AdmissionControl(rate=3.0, latency_target=0.1, burst=4.0)
    clamped = AdmissionControl(rate=3.0, latency_target=0.1, burst=4.0)
    newest = -math.inf
    for now, cost in requests:
        newest = max(newest, now)
        assert forward.try_acquire(now, cost) == clamped.try_acquire(newest, cost)


@given(
    rate=st.floats(min_value=0.1, max_value=100.0),
    burst=st.floats(min_value=0.5, max_value=50.0),
    requests=st.lists(
        st.tuples(st.floats(min_value=0.0, max_value=10.0), st.floats(min_value=0.0, max_value=3.0)),
        min_size=1,
        max_size=60,
    ),
)
def test_admitted_work_in_any_window_is_bounded_by_burst_plus_rate_times_elapsed(rate, burst, requests):
    """The token bucket contract: over any run of consecutive calls, the cost admitted is at most what
    the bucket could hold at the start plus what it refilled during the window."""
    control = AdmissionControl(rate=rate, latency_target=0.1, burst=burst)
    times = sorted(now for now, _ in requests)
    outcomes = []
    for now, (_, cost) in zip(times, requests, strict=True):
        outcomes.append((now, cost, control.try_acquire(now, cost)))
    assert control.admitted + control.deferred == len(requests)
    for start in range(len(outcomes)):
        admitted_cost = 0.0
        admitted_count = 0
        for end in range(start, len(outcomes)):
            now, cost, ok = outcomes[end]
            if ok:
                admitted_cost += cost
                admitted_count += 1
            allowance = burst + rate * (now - outcomes[start][0])
            assert admitted_cost <= allowance + EPSILON
            if all(c == 1.0 for _, c, _ in outcomes[start : end + 1]):
                assert admitted_count <= allowance + EPSILON


@given(
    rate=st.floats(min_value=0.5, max_value=50.0),
    gaps=st.lists(st.floats(min_value=0.0, max_value=2.0), min_size=1, max_size=50),
)
def test_a_steady_demand_gets_everything_the_bucket_allows(rate, gaps):
    """The bound is not met by admitting too little: a caller asking all the time gets the full bucket
    plus every token refilled since, short of the fraction of a token still building up."""
    # Room for a whole gap's refill on top of a leftover fraction, so no refill is lost to the cap.
    burst = 2.0 * rate + 1.0
    control = AdmissionControl(rate=rate, latency_target=0.1, burst=burst)
    now = 0.0
    admitted = 0
    while control.try_acquire(now):
        admitted += 1
    for gap in gaps:
        now += gap
        while control.try_acquire(now):
            admitted += 1
    assert burst + rate * now - 1.0 - EPSILON < admitted <= burst + rate * now + EPSILON


# --- AIMD controller --------------------------------------------------------------------------------


def test_before_any_sample_the_foreground_counts_as_healthy():
    control = AdmissionControl(rate=10.0, latency_target=0.1)
    assert control.latency is None
    control.adjust()
    assert control.fraction == 1.0
    assert control.current_rate == 10.0


def test_the_first_sample_sets_the_average_and_later_ones_are_smoothed():
    control = AdmissionControl(rate=10.0, latency_target=0.1, smoothing=0.25)
    control.observe_latency(0.2)
    assert control.latency == 0.2
    control.observe_latency(0.6)
    assert control.latency == pytest.approx(0.3)
    control.observe_latency(0.3)
    assert control.latency == pytest.approx(0.3)


def test_one_slow_request_does_not_trip_a_smoothed_healthy_average():
    control = AdmissionControl(rate=10.0, latency_target=0.1, smoothing=0.2)
    for _ in range(20):
        control.observe_latency(0.01)
    control.observe_latency(0.3)  # 0.01 + 0.2 * 0.29 = 0.068, still under the target
    control.adjust()
    assert control.fraction == 1.0


@given(
    latencies=st.lists(st.floats(min_value=0.0, max_value=0.1), min_size=1, max_size=50),
    smoothing=st.floats(min_value=0.01, max_value=1.0),
)
def test_healthy_latency_keeps_the_full_rate(latencies, smoothing):
    control = AdmissionControl(rate=8.0, latency_target=0.1, smoothing=smoothing)
    for latency in latencies:
        control.observe_latency(latency)
        control.adjust()
        assert control.fraction == 1.0
        assert control.current_rate == 8.0


def test_sustained_high_latency_halves_the_fraction_down_to_the_floor():
    control = AdmissionControl(rate=100.0, latency_target=0.05, decrease=0.5, min_fraction=0.05)
    fractions = []
    for _ in range(8):
        control.observe_latency(0.5)
        control.adjust()
        fractions.append(control.fraction)
    assert fractions == [0.5, 0.25, 0.125, 0.0625, 0.05, 0.05, 0.05, 0.05]
    assert control.current_rate == pytest.approx(5.0)


@given(
    decrease=st.floats(min_value=0.01, max_value=0.99),
    min_fraction=st.floats(min_value=0.001, max_value=1.0),
    steps=st.integers(min_value=1, max_value=200),
)
def test_the_fraction_never_falls_below_the_floor(decrease, min_fraction, steps):
    control = AdmissionControl(rate=10.0, latency_target=0.01, decrease=decrease, min_fraction=min_fraction)
    previous = control.fraction
    for _ in range(steps):
        control.observe_latency(1.0)
        control.adjust()
        assert min_fraction <= control.fraction <= previous
        previous = control.fraction
    # Enough halvings (or whatever the factor is) reach the floor and stay there.
    needed = math.ceil(math.log(min_fraction) / math.log(decrease)) if min_fraction < 1 else 0
    if steps >= needed:
        assert control.fraction == min_fraction


@given(
    increase=st.floats(min_value=0.01, max_value=1.0),
    min_fraction=st.floats(min_value=0.01, max_value=1.0),
)
def test_recovery_is_additive_back_to_the_full_rate(increase, min_fraction):
    control = AdmissionControl(rate=10.0, latency_target=0.1, increase=increase, min_fraction=min_fraction)
    drive_slow(control, 200, latency=1.0)
    assert control.fraction == min_fraction
    for _ in range(20):
        control.observe_latency(0.0)  # 0.8 ** 20 pulls the smoothed latency back under the target
    steps = 0
    while control.fraction < 1.0:
        before = control.fraction
        control.adjust()
        steps += 1
        assert control.fraction == min(1.0, before + increase)
        assert steps <= math.ceil((1.0 - min_fraction) / increase) + 1
    control.adjust()
    assert control.fraction == 1.0


def test_recovery_from_the_floor_takes_ten_steps_of_a_tenth():
    control = AdmissionControl(rate=10.0, latency_target=0.1, increase=0.1, min_fraction=0.05)
    drive_slow(control, 10, latency=1.0)
    for _ in range(20):
        control.observe_latency(0.0)
    assert control.latency < 0.1
    fractions = []
    for _ in range(11):
        control.adjust()
        fractions.append(control.fraction)
    assert fractions[:9] == pytest.approx([0.15, 0.25, 0.35, 0.45, 0.55, 0.65, 0.75, 0.85, 0.95])
    assert fractions[9:] == [1.0, 1.0]


def test_latency_exactly_at_the_target_is_healthy():
    control = AdmissionControl(rate=10.0, latency_target=0.25)
    control.observe_latency(0.25)
    control.adjust()
    assert control.fraction == 1.0


# --- arguments and report ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"rate": 0.0},
        {"rate": -1.0},
        {"rate": math.inf},
        {"rate": math.nan},
        {"latency_target": 0.0},
        {"latency_target": -0.1},
        {"latency_target": math.nan},
        {"burst": 0.0},
        {"burst": -2.0},
        {"burst": math.inf},
        {"decrease": 0.0},
        {"decrease": 1.0},
        {"decrease": 1.5},
        {"increase": 0.0},
        {"increase": -0.1},
        {"min_fraction": 0.0},
        {"min_fraction": 1.5},
        {"smoothing": 0.0},
        {"smoothing": 1.1},
    ],
)
def test_invalid_arguments_are_rejected(kwargs):
    arguments = {"rate": 10.0, "latency_target": 0.1} | kwargs
    with pytest.raises(ValueError):
        AdmissionControl(**arguments)


def test_invalid_samples_times_and_costs_are_rejected_without_changing_state():
    control = AdmissionControl(rate=1.0, latency_target=0.1)
    for bad in (-0.1, math.nan, math.inf):
        with pytest.raises(ValueError):
            control.observe_latency(bad)
    assert control.latency is None
    for now, cost in ((math.nan, 1.0), (math.inf, 1.0), (0.0, -1.0), (0.0, math.nan)):
        with pytest.raises(ValueError):
            control.try_acquire(now, cost)
    assert (control.admitted, control.deferred) == (0, 0)
    assert control.try_acquire(0.0)


def test_report_fields():
    control = AdmissionControl(rate=20.0, latency_target=0.05, decrease=0.5)
    assert control.report() == {
        "rate": 20.0,
        "current_rate": 20.0,
        "fraction": 1.0,
        "latency_ms": None,
        "latency_target_ms": 50.0,
        "admitted": 0,
        "deferred": 0,
    }
    control.observe_latency(0.2)
    control.adjust()
    for _ in range(21):
        control.try_acquire(0.0)
    report = control.report()
    assert report["fraction"] == 0.5
    assert report["current_rate"] == 10.0
    assert report["latency_ms"] == pytest.approx(200.0)
    assert (report["admitted"], report["deferred"]) == (20, 1)


# --- model-based ------------------------------------------------------------------------------------


class AdmissionMachine(RuleBasedStateMachine):
    """Random interleavings of samples, AIMD steps and requests (with clock jumps both ways) against a
    simple model of the bucket kept with the times already clamped to the newest seen."""

    def __init__(self):
        super().__init__()
        self.control = AdmissionControl(rate=5.0, latency_target=0.1, burst=3.0, min_fraction=0.1)
        self.tokens = 3.0
        self.newest: float | None = None
        self.calls = 0

    @rule(latency=st.floats(min_value=0.0, max_value=1.0))
    def observe(self, latency):
        self.control.observe_latency(latency)

    @rule()
    def adjust(self):
        self.control.adjust()

    @rule(step=st.floats(min_value=-5.0, max_value=5.0), cost=st.sampled_from([0.5, 1.0, 2.0, 4.0]))
    def acquire(self, step, cost):
        now = (self.newest or 0.0) + step
        if self.newest is not None and now > self.newest:
            self.tokens = min(3.0, self.tokens + (now - self.newest) * self.control.current_rate)
        if self.newest is None or now > self.newest:
            self.newest = now
        expected = self.tokens >= cost
        if expected:
            self.tokens -= cost
        self.calls += 1
        assert self.control.try_acquire(now, cost) == expected

    @precondition(lambda self: self.newest is not None)
    @rule()
    def backwards_gives_nothing_new(self):
        # A request stamped earlier than anything seen is judged on the tokens already there.
        expected = self.tokens >= 1.0
        if expected:
            self.tokens -= 1.0
        self.calls += 1
        assert self.control.try_acquire(self.newest - 1.0) == expected

    @invariant()
    def fraction_in_range(self):
        assert 0.1 <= self.control.fraction <= 1.0
        assert self.control.current_rate == pytest.approx(5.0 * self.control.fraction)

    @invariant()
    def counters_add_up(self):
        assert self.control.admitted + self.control.deferred == self.calls
        report = self.control.report()
        assert (report["admitted"], report["deferred"]) == (self.control.admitted, self.control.deferred)


AdmissionMachine.TestCase.settings = settings(max_examples=50, stateful_step_count=40, deadline=None)
TestAdmissionMachine = AdmissionMachine.TestCase
