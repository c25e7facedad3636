"""Failure detection over scripted arrival and failure times."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from dynamod.core.detector import FailureDetector, PhiAccrual


def regular(detector: FailureDetector, peer: str, every: float, until: float) -> float:
    now = 0.0
    while now <= until:
        detector.arrival(peer, now)
        now += every
    return now - every


def test_a_peer_heard_every_second_is_up_and_suspected_after_a_few_silent_seconds():
    detector = FailureDetector(phi_threshold=8.0)
    last = regular(detector, "n2", 1.0, 30.0)
    assert detector.is_up("n2", last + 1.0)
    assert detector.is_up("n2", last + 1.2)
    assert not detector.is_up("n2", last + 5.0)


def test_phi_grows_with_silence():
    accrual = PhiAccrual()
    for t in range(20):
        accrual.arrival(float(t))
    values = [accrual.phi(19.0 + dt) for dt in (0.5, 1.0, 1.5, 2.0, 3.0)]
    assert values == sorted(values) and values[0] < 1.0 < values[-1]


def test_an_irregular_peer_is_given_more_slack_than_a_regular_one():
    steady, jittery = FailureDetector(), FailureDetector()
    now = 0.0
    for i in range(60):
        steady.arrival("p", float(i))
        now += 0.2 if i % 2 else 1.8
        jittery.arrival("p", now)
    assert steady.phi("p", 59.0 + 2.5) > jittery.phi("p", now + 2.5)


def test_failed_requests_mark_a_peer_down_at_once_and_an_answer_brings_it_back():
    detector = FailureDetector(failures_to_suspect=2)
    regular(detector, "n3", 1.0, 10.0)
    detector.failure("n3", 10.1)
    assert detector.is_up("n3", 10.2)
    detector.failure("n3", 10.3)
    assert not detector.is_up("n3", 10.4)
    detector.arrival("n3", 10.5)
    assert detector.is_up("n3", 10.6)


def test_a_peer_is_up_only_once_heard_from():
    detector = FailureDetector()
    assert not detector.is_up("new", 100.0)
    detector.arrival("new", 100.5)
    assert detector.is_up("new", 100.6)


@given(st.lists(st.floats(0.01, 5.0), min_size=2, max_size=50), st.floats(0, 100))
def test_phi_is_finite_non_negative_and_monotone_in_silence(gaps, extra):
    accrual = PhiAccrual()
    now = 0.0
    for gap in gaps:
        now += gap
        accrual.arrival(now)
    a, b = accrual.phi(now + extra), accrual.phi(now + extra + 1.0)
    assert 0.0 <= a <= b and b < float("inf")


@given(st.lists(st.floats(0.01, 5.0), min_size=1, max_size=300), st.integers(2, 50))
def test_running_statistics_match_a_direct_computation(gaps, window):
    import math

    accrual = PhiAccrual(window=window, min_std=0.0, first_interval=0.01)  # every gap is a sample
    now = 0.0
    accrual.arrival(now)
    for gap in gaps:
        now += gap
        accrual.arrival(now)
    kept = gaps[-window:]
    mean = sum(kept) / len(kept)
    std = math.sqrt(sum((g - mean) ** 2 for g in kept) / len(kept))
    got_mean, got_std = accrual._mean_and_std()
    assert math.isclose(got_mean, mean, rel_tol=1e-6, abs_tol=1e-9)
    assert math.isclose(got_std, std, rel_tol=1e-4, abs_tol=1e-4)


def test_an_extra_answer_right_after_another_is_not_a_sample_of_the_heartbeat_spacing():
    detector = FailureDetector(phi_threshold=8.0, first_interval=1.0)
    detector.arrival("n2", 0.004)  # the start-up ping's answer...
    detector.arrival("n2", 0.005)  # ...and the one sent when the connection opened
    assert detector.is_up("n2", 1.0)  # the next beat: one second of silence is the normal spacing
    assert not detector.is_up("n2", 6.0)  # five are not
