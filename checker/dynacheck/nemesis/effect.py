"""Did a fault take effect? The nemesis looks, so that a fault that could not take effect is
reported as such, never as ok (Jepsen's lesson from clock and process faults that silently did
nothing: a supervisor restarts a killed process, a clock hook is not loaded).

Pure judgements (``judge_clock``, ``judge_stayed_down``, ``judge_paused``) beside ``Observer``, the
only part that looks at the nodes (their ``/admin/status``, ``dynactl service status``), and
``KilledNodes``, which remembers what a kill took down until its stop starts it again:

* clock: a node reports its own wall clock in ``/admin/status`` (``wall_clock``, what its version
  timestamps take). Read against the checker's clock at the midpoint of the request, it is known
  to within half the round trip. Each node's offset is measured once when the nemesis is set up,
  every clock file at ``+0`` (``baseline``: a host's own clock may differ from the checker's), and
  a fault is judged by how far the clock moved from it.
* kill (and the crash faults, which kill first): before a stop starts them again, each killed node
  must still be down: not answering, and ``dynactl service status`` not running.
* pause: a paused node must not answer ``/admin/status`` within ``PROBE_TIMEOUT``.

A node's result carries what was seen (``Observed``): not ok when the fault was seen to have no
effect there; ``took`` None when nothing could be seen (the node did not answer a clock read: a kill
may hold it), which leaves the result as it was.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import attrs

from dynacheck.db import Cluster
from dynactl.output import EXIT_NO
from dynactl.remote import HostResult
from dynamod.client import ClientError, DynamoClient, NodeUnavailable
from dynamod.polling import wait_until

#: Seconds a probe of a node's /admin/status waits: a running node answers in milliseconds, and a
#: paused one must stay silent this long to count as paused.
PROBE_TIMEOUT = 1.0
#: How far (s) a node's wall clock may be from the planned offset beyond the reading's own
#: uncertainty (half of each round trip involved). The nodes run with FAKETIME_NO_CACHE=1
#: (``dynactl.service.faketime_environment``): libfaketime re-reads the timestamp file on every
#: wall-clock read, so a node whose hook works shows the new offset, exactly, at its next read.
#: What is left is rounding (the file and ``wall_clock`` are in ms) and a host clock's drift from
#: the checker's since the baseline (NTP keeps it to a few ms in a run): 5 ms, half the smallest
#: bump (10 ms), so over round trips of a few ms even that bump is told from none; a reading that
#: cannot tell them apart is reported as not seen (None), never as a pass.
CLOCK_TOLERANCE = 0.005
#: Seconds the clock check polls before it judges. With the file re-read on every read the first
#: probe normally settles it; the deadline rides out a read that raced the file's rewrite (printf
#: truncates, then writes) and a probe slowed by load. It is well under libfaketime's default cache
#: of 10 s (FAKETIME_CACHE_DURATION): a node running with the cache on lags by up to that and is
#: reported, since the strobe's flips would pass it by.
CLOCK_SETTLE_SECONDS = 2.0
#: Samples the baseline takes per node (the one with the shortest round trip is kept).
BASELINE_SAMPLES = 3


@attrs.frozen
class Effect:
    """What the checker saw of a fault on one node: ``took`` True (seen to take effect), False (seen
    not to), None (could not be seen); ``effect_of`` says whether it checked the fault's start (a
    kill that must hold until its stop counts here too) or its stop (the clock back at 0)."""

    took: bool | None
    reason: str
    effect_of: str = "start"
    figures: dict[str, Any] = attrs.field(factory=dict, hash=False)

    def document(self) -> dict[str, Any]:
        """What the nemesis op's ``effect`` holds for the node."""
        return {"took_effect": self.took, "effect_of": self.effect_of, "reason": self.reason, **self.figures}


@attrs.frozen
class Observed(HostResult):
    """A node's result with what the checker saw of the fault there: not ok when the fault was seen
    to have no effect (``action_ok`` still says whether the command itself succeeded)."""

    effect: Effect | None = None
    action_ok: bool = True


def with_effect(result: HostResult, effect: Effect) -> Observed:
    """``result`` with ``effect``: a fault seen to have no effect makes it not ok, with the reason."""
    without = effect.took is False
    error = result.error if not result.ok else (f"no effect: {effect.reason}" if without else None)
    return Observed(host=result.host, ok=result.ok and not without, exit_code=result.exit_code, stdout=result.stdout,
                    stderr=result.stderr, error=error, effect=effect, action_ok=result.ok)


def observed(results: dict[str, HostResult], effects: dict[str, Effect]) -> dict[str, HostResult]:
    """``results`` with each node's effect, where one was looked at."""
    return {node: with_effect(result, effects[node]) if node in effects else result
            for node, result in results.items()}


# -- pure judgements ------------------------------------------------------------------------------


@attrs.frozen
class ClockSample:
    """A node's wall clock against the checker's: ``offset`` seconds at the midpoint of the request
    that read it, to within ``uncertainty`` (half its round trip) either way."""

    offset: float
    uncertainty: float


NO_SKEW = ClockSample(0.0, 0.0)


def judge_clock(sample: ClockSample, planned: float, previous: float, baseline: ClockSample = NO_SKEW,
                effect_of: str = "start") -> Effect:
    """Did the node's clock move to ``planned`` (seconds from its ``baseline``) from ``previous``?
    False when it is off the plan by more than the tolerance; None while the reading cannot tell the
    plan from the previous offset (a small bump read over a slow round trip)."""
    moved = sample.offset - baseline.offset
    shown = round(moved, 3) + 0.0  # in ms, as the node reports its clock (and never -0.000)
    tolerance = CLOCK_TOLERANCE + sample.uncertainty + baseline.uncertainty
    figures: dict[str, Any] = {"planned": planned, "observed": shown, "tolerance": round(tolerance, 3),
                               "round_trip": round(2 * sample.uncertainty, 3)}
    if abs(baseline.offset) >= 0.001:
        figures["host_clock"] = round(baseline.offset, 3)  # the host's own clock against the checker's
    seen = f"wall clock {shown:+.3f} s off, planned {planned:+.3f} s"
    within = f"±{tolerance * 1000:.0f} ms"
    if abs(moved - planned) > tolerance:
        stuck = f", still at {previous:+.3f} s" if previous != planned and abs(moved - previous) <= tolerance else ""
        return Effect(False, f"{seen} (beyond {within}{stuck})", effect_of, figures)
    if previous != planned and abs(moved - previous) <= tolerance:
        return Effect(None, f"{seen}: within {within} of {previous:+.3f} s before too (round trip "
                            f"{2 * sample.uncertainty * 1000:.0f} ms), so it cannot tell", effect_of, figures)
    return Effect(True, seen, effect_of, figures)


def judge_stayed_down(down_for: float, answer: dict[str, Any] | str, running: bool | None,
                      running_detail: str = "") -> Effect:
    """Did a node killed ``down_for`` seconds ago stay down? ``answer`` is its /admin/status (or why
    none came), ``running`` what ``dynactl service status`` said (None: it could not tell)."""
    figures: dict[str, Any] = {"down_for": round(down_for, 3)}
    if isinstance(answer, dict):
        uptime = answer.get("uptime")
        if isinstance(uptime, int | float):
            back = max(0.0, down_for - uptime)
            return Effect(False, f"restarted by something else after {back:.1f} s (answering again, up "
                                 f"{uptime:.1f} s)",
                          figures={**figures, "stayed_down": False, "back_after": round(back, 3)})
        return Effect(False, f"restarted by something else within {down_for:.1f} s (answering again)",
                      figures={**figures, "stayed_down": False})
    if running:
        return Effect(False, f"restarted by something else within {down_for:.1f} s (its process runs again: "
                             f"{running_detail})", figures={**figures, "stayed_down": False})
    unsure = "" if running is False else f"; dynactl service status could not tell: {running_detail}"
    return Effect(True, f"stayed down {down_for:.1f} s (not answering{unsure})",
                  figures={**figures, "stayed_down": True})


def judge_paused(answer: dict[str, Any] | str, timeout: float) -> Effect:
    """Did a paused node stop answering? ``answer`` is its /admin/status within ``timeout``, or why none came."""
    if isinstance(answer, dict):
        return Effect(False, f"answered /admin/status while paused (up {answer.get('uptime')} s)",
                      figures={"answered": True})
    return Effect(True, f"silent for {timeout:g} s ({answer})", figures={"answered": False})


def service_running(result: HostResult | None) -> tuple[bool | None, str]:
    """What ``dynactl service status`` said: running (exit 0), not running (its "no" exit), or None
    when it could not be asked; with its words."""
    if result is None:
        return None, "not asked"
    if result.ok:
        return True, (result.stdout.strip().splitlines() or ["running"])[-1]
    if result.exit_code == EXIT_NO:
        return False, "not running"
    return None, result.error or "failed"


# -- looking at the nodes -------------------------------------------------------------------------


class Observer:
    """Reads what the judgements judge from the cluster's nodes. ``clock`` is monotonic (how long a
    node stayed down, the polling deadline), ``wall_clock`` the checker's own wall clock."""

    def __init__(self, cluster: Cluster, clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time, sleep: Callable[[float], None] = time.sleep,
                 timeout: float = PROBE_TIMEOUT):
        self.cluster, self.clock, self.wall_clock, self.sleep, self.timeout = cluster, clock, wall_clock, sleep, timeout

    def sample(self, client: DynamoClient | None) -> ClockSample | str:
        """One reading of a node's wall clock, or why there is none."""
        if client is None:
            return "not a member"
        before = self.wall_clock()
        try:
            status = client.status()
        except (ClientError, NodeUnavailable) as exc:
            return f"did not answer ({exc})"
        after = self.wall_clock()
        node_clock = status.get("wall_clock")
        if not isinstance(node_clock, int | float):
            return "its /admin/status has no wall_clock (an older dynamod)"
        return ClockSample(offset=node_clock - (before + after) / 2, uncertainty=(after - before) / 2)

    def baseline(self, nodes: list[str]) -> dict[str, ClockSample | str]:
        """Each node's clock against the checker's while its offset is 0: the best of a few readings."""
        found: dict[str, ClockSample | str] = {}
        with self.cluster.clients(self.timeout) as clients:
            for node in nodes:
                samples = [self.sample(clients.get(node)) for _ in range(BASELINE_SAMPLES)]
                good = [sample for sample in samples if isinstance(sample, ClockSample)]
                found[node] = min(good, key=lambda sample: sample.uncertainty) if good else samples[-1]
        return found

    def clocks(self, planned: dict[str, float], previous: dict[str, float], baseline: dict[str, ClockSample],
               effect_of: str = "start") -> dict[str, Effect]:
        """Poll each node's clock until all moved as planned (from ``previous``) or the settle deadline
        passed; a node that does not answer is None (not seen) at once: a kill or a pause holds it,
        and waiting for it would only delay the fault schedule."""
        effects: dict[str, Effect] = {}
        unread: set[str] = set()
        if not planned:
            return effects
        with self.cluster.clients(self.timeout) as clients:
            def probe() -> bool:
                for node, offset in planned.items():
                    if node in unread or (node in effects and effects[node].took):
                        continue
                    sample = self.sample(clients.get(node))
                    if isinstance(sample, str):
                        effects[node] = Effect(None, f"wall clock not read: {sample}", effect_of)
                        unread.add(node)
                    else:
                        effects[node] = judge_clock(sample, offset, previous.get(node, 0.0),
                                                    baseline.get(node, NO_SKEW), effect_of)
                return all(node in unread or effect.took for node, effect in effects.items())
            wait_until(probe, CLOCK_SETTLE_SECONDS, interval=0.1, clock=self.clock, sleep=self.sleep)
        return effects

    def stayed_down(self, killed_at: dict[str, float]) -> dict[str, Effect]:
        """Whether each node killed at ``killed_at[node]`` (``clock`` time) is still down."""
        if not killed_at:
            return {}
        now = self.clock()
        nodes = list(killed_at)
        answers = self.cluster.statuses(self.timeout, nodes)
        running = self.cluster.service("status", nodes)
        return {node: judge_stayed_down(now - killed_at[node], answers[node], *service_running(running.get(node)))
                for node in nodes}

    def paused(self, nodes: list[str]) -> dict[str, Effect]:
        """Whether each paused node is silent for ``timeout``."""
        answers = self.cluster.statuses(self.timeout, nodes) if nodes else {}
        return {node: judge_paused(answer, self.timeout) for node, answer in answers.items()}


class KilledNodes:
    """The nodes a fault killed and has not started again, with when: starting them first checks that
    each stayed down (a supervisor that restarted one made the kill a no-op there)."""

    def __init__(self, cluster: Cluster, observer: Observer):
        self.cluster, self.observer = cluster, observer
        self.killed_at: dict[str, float] = {}

    def killed(self, results: dict[str, HostResult]) -> None:
        """The kill's results: each node it killed is now down."""
        for node, result in results.items():
            if result.ok:
                self.killed_at[node] = self.observer.clock()

    def start(self, nodes: list[str] | None = None) -> dict[str, HostResult]:
        """Check that the killed ones among ``nodes`` (default every member) stayed down, then start them."""
        chosen = self.cluster.ids if nodes is None else nodes
        effects = self.observer.stayed_down({node: self.killed_at.pop(node) for node in chosen
                                             if node in self.killed_at})
        return observed(self.cluster.service("start", nodes), effects)
