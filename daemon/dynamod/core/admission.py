"""Admission control for background work (Dynamo §6.5: balancing background and foreground tasks).

Hinted handoff, anti-entropy, ring transfers and read repair all compete with client requests for the
same disks and sockets. Dynamo gives them a rate-limited share of the node and shrinks that share
when foreground latency rises, so a busy node serves its clients first and catches up later.

Two parts, both pure and deterministic (no I/O, no clock reads: the time is always an argument):

* a **token bucket** that admits background operations at ``current_rate`` with at most ``burst``
  saved up, refilled lazily on each ``try_acquire(now)``;
* an **AIMD controller** over the fraction of ``rate`` allowed: the shell feeds in foreground request
  latencies (smoothed by an EWMA) and calls ``adjust()`` periodically; above the latency target the
  fraction is cut multiplicatively (never below ``min_fraction``, so background work is slowed but
  never starved), otherwise it grows back additively to 1, as TCP congestion control does.

Time that goes backwards (a clock step, or callers racing with stale timestamps) counts as no time
at all: it never creates tokens, and the later forward time is measured from the newest time seen.
"""

from __future__ import annotations

import math


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _finite(value: float) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


class AdmissionControl:
    """Decides whether one more background operation may run now, and how fast they may run."""

    def __init__(
        self,
        rate: float,
        latency_target: float,
        *,
        burst: float | None = None,
        decrease: float = 0.5,
        increase: float = 0.1,
        min_fraction: float = 0.05,
        smoothing: float = 0.2,
    ) -> None:
        _require(_finite(rate) and rate > 0, f"rate must be a positive number, not {rate!r}")
        _require(
            _finite(latency_target) and latency_target > 0,
            f"latency_target must be a positive number of seconds, not {latency_target!r}",
        )
        if burst is None:
            burst = max(1.0, float(rate))
        _require(_finite(burst) and burst > 0, f"burst must be a positive number, not {burst!r}")
        _require(_finite(decrease) and 0 < decrease < 1, f"decrease must be in (0, 1), not {decrease!r}")
        _require(_finite(increase) and increase > 0, f"increase must be positive, not {increase!r}")
        _require(
            _finite(min_fraction) and 0 < min_fraction <= 1, f"min_fraction must be in (0, 1], not {min_fraction!r}"
        )
        _require(_finite(smoothing) and 0 < smoothing <= 1, f"smoothing must be in (0, 1], not {smoothing!r}")
        self.rate = float(rate)
        self.latency_target = float(latency_target)
        self.burst = float(burst)
        self.decrease = float(decrease)
        self.increase = float(increase)
        self.min_fraction = float(min_fraction)
        self.smoothing = float(smoothing)
        self.admitted = 0
        self.deferred = 0
        self._fraction = 1.0
        self._latency: float | None = None
        # The bucket starts full: a node that has just started has no foreground load to protect yet.
        self._tokens = self.burst
        self._last: float | None = None

    @property
    def fraction(self) -> float:
        """Share of ``rate`` currently allowed, in ``[min_fraction, 1]``."""
        return self._fraction

    @property
    def current_rate(self) -> float:
        """Background operations per second allowed right now."""
        return self.rate * self._fraction

    @property
    def latency(self) -> float | None:
        """Smoothed foreground latency in seconds, or None before the first sample."""
        return self._latency

    def observe_latency(self, seconds: float) -> None:
        """Fold one foreground request latency into the moving average; the first sample sets it."""
        _require(_finite(seconds) and seconds >= 0, f"latency must be a non-negative number, not {seconds!r}")
        if self._latency is None:
            self._latency = float(seconds)
        else:
            self._latency += self.smoothing * (seconds - self._latency)

    def adjust(self) -> None:
        """One AIMD step: cut the fraction when the foreground is slow, otherwise grow it back.

        With no latency samples yet the foreground is taken as healthy.
        """
        if self._latency is not None and self._latency > self.latency_target:
            self._fraction = max(self.min_fraction, self._fraction * self.decrease)
        else:
            self._fraction = min(1.0, self._fraction + self.increase)

    def try_acquire(self, now: float, cost: float = 1.0) -> bool:
        """Take ``cost`` tokens at time ``now`` if the bucket holds them; must not block or wait.

        The bucket is first refilled at ``current_rate`` for the time since the newest earlier call.
        A ``cost`` larger than ``burst`` can never be admitted.
        """
        _require(_finite(now), f"now must be a finite time, not {now!r}")
        _require(_finite(cost) and cost >= 0, f"cost must be a non-negative number, not {cost!r}")
        if self._last is not None and now > self._last:
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.current_rate)
        # Keep the newest time seen, so time going back and then forward again is not refilled twice.
        if self._last is None or now > self._last:
            self._last = float(now)
        if self._tokens >= cost:
            self._tokens -= cost
            self.admitted += 1
            return True
        self.deferred += 1
        return False

    def report(self) -> dict:
        """A JSON-ready snapshot for the status endpoint and logs."""
        return {
            "rate": self.rate,
            "current_rate": self.current_rate,
            "fraction": self._fraction,
            "latency_ms": None if self._latency is None else self._latency * 1000.0,
            "latency_target_ms": self.latency_target * 1000.0,
            "admitted": self.admitted,
            "deferred": self.deferred,
        }
