"""``dynamod.polling.wait_until`` on a fake clock: no process, no real sleep."""

from __future__ import annotations

import time

import pytest

from dynamod.polling import wait_until


class FakeTime:
    """A clock that only moves when slept on (or when a probe says its work took time)."""

    def __init__(self, now: float = 100.0):
        self.now = now
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def recording(fake: FakeTime, answers: list, calls: list[float]):
    """A probe giving ``answers`` in turn (the last one for ever) and noting when it was called."""
    def probe():
        calls.append(fake.now)
        return answers[min(len(calls), len(answers)) - 1]
    return probe


def test_an_answer_that_is_already_true_returns_at_once_without_sleeping():
    fake = FakeTime()
    assert wait_until(lambda: "ready", 10.0, clock=fake.clock, sleep=fake.sleep) == "ready"
    assert fake.sleeps == []


def test_it_polls_every_interval_and_returns_the_first_truthy_answer():
    fake, calls = FakeTime(0.0), []
    assert wait_until(recording(fake, [None, None, 0, 4242], calls), 10.0, interval=0.5,
                      clock=fake.clock, sleep=fake.sleep) == 4242
    assert calls == [0.0, 0.5, 1.0, 1.5]


def test_it_gives_up_at_the_deadline_with_the_last_answer_and_polls_once_at_the_deadline_itself():
    fake, calls = FakeTime(0.0), []
    assert wait_until(recording(fake, [False], calls), 1.0, interval=0.25,
                      clock=fake.clock, sleep=fake.sleep) is False
    assert calls == [0.0, 0.25, 0.5, 0.75, 1.0]


def test_no_sleep_goes_past_the_deadline():
    fake, calls = FakeTime(0.0), []
    assert wait_until(recording(fake, [[]], calls), 1.0, interval=0.4, clock=fake.clock, sleep=fake.sleep) == []
    assert calls == pytest.approx([0.0, 0.4, 0.8, 1.0])
    assert fake.sleeps == pytest.approx([0.4, 0.4, 0.2])


def test_a_zero_deadline_still_polls_once():
    fake, calls = FakeTime(), []
    assert wait_until(recording(fake, [None], calls), 0.0, clock=fake.clock, sleep=fake.sleep) is None
    assert len(calls) == 1 and fake.sleeps == []


def test_a_probe_slower_than_the_deadline_is_not_called_again():
    fake, calls = FakeTime(0.0), []

    def slow() -> bool:
        calls.append(fake.now)
        fake.now += 3.0  # the probe itself took 3 s
        return False

    assert wait_until(slow, 2.0, interval=0.1, clock=fake.clock, sleep=fake.sleep) is False
    assert calls == [0.0] and fake.sleeps == []


def test_done_decides_which_answer_ends_the_wait_and_the_last_answer_comes_back_whole():
    fake = FakeTime(0.0)
    answers = iter([(False, "n2 down"), (False, "3 keys to transfer"), (True, "healthy")])
    assert wait_until(lambda: next(answers), 5.0, interval=1.0, done=lambda answer: answer[0],
                      clock=fake.clock, sleep=fake.sleep) == (True, "healthy")
    # A tuple is always truthy: without ``done`` the first answer would have ended the wait.
    stuck = wait_until(lambda: (False, "n2 down"), 2.0, interval=1.0, done=lambda answer: answer[0],
                       clock=fake.clock, sleep=fake.sleep)
    assert stuck == (False, "n2 down") and fake.now == 4.0


def test_done_can_wait_for_an_empty_answer_meaning_nothing_is_left():
    fake = FakeTime(0.0)
    left = iter([["n1", "n2"], ["n2"], []])
    assert wait_until(lambda: next(left), 5.0, interval=0.1, done=lambda names: not names,
                      clock=fake.clock, sleep=fake.sleep) == []
    assert fake.sleeps == pytest.approx([0.1, 0.1])


def test_an_exception_from_the_probe_ends_the_wait_at_once():
    fake = FakeTime()

    def exited() -> bool:
        raise RuntimeError("the node exited during start-up")

    with pytest.raises(RuntimeError, match="exited during start-up"):
        wait_until(exited, 10.0, clock=fake.clock, sleep=fake.sleep)
    assert fake.sleeps == []


def test_by_default_it_reads_the_monotonic_clock_and_really_sleeps():
    """Checked by looking at the defaults, not by sleeping: a wall clock set back must not stretch a wait."""
    defaults = wait_until.__kwdefaults__
    assert defaults["clock"] is time.monotonic and defaults["sleep"] is time.sleep
    assert defaults["interval"] == 0.05 and defaults["done"] is bool
