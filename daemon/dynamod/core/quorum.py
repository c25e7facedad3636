"""Quorum coordination as pure state machines (Dynamo §4.5), in the shape of riak_kv's put core.

A coordinator creates a core with the replicas it contacts, feeds it each reply as it arrives
(``add_ack``/``add_reply``/``add_error``), asks ``done()`` after every reply, and turns
``response()`` into the client's answer. A timeout is just ``timed_out()``. The cores never send,
wait or read a clock: the Twisted shell in ``dynamod.coordinator`` does that.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence

import attrs

from dynamod.core.versions import Sibling, reconcile, reconcile_lww


class Outcome(enum.Enum):
    """Where a quorum operation stands."""

    PENDING = "pending"
    OK = "ok"
    FAILED = "failed"


@attrs.frozen
class QuorumResult:
    """The final answer of a quorum operation."""

    outcome: Outcome
    needed: int
    acks: int
    errors: dict[str, str] = attrs.field(factory=dict)
    siblings: tuple[Sibling, ...] = ()
    reason: str = ""


def validate_quorum(n: int, value: int, name: str) -> None:
    """Raise ``ValueError`` unless ``1 <= value <= n``."""
    if not 1 <= value <= n:
        raise ValueError(f"{name} must be between 1 and n={n}, got {value}")


@attrs.define
class PutCore:
    """Counts write acknowledgements until W arrive, or until W can no longer be reached."""

    replicas: Sequence[str]
    w: int
    acks: set[str] = attrs.field(factory=set)
    errors: dict[str, str] = attrs.field(factory=dict)
    _timed_out: bool = False

    def add_ack(self, replica: str) -> None:
        """A replica durably stored the version."""
        if replica not in self.errors:
            self.acks.add(replica)

    def add_error(self, replica: str, reason: str) -> None:
        """A replica refused, failed or could not be reached."""
        if replica not in self.acks:
            self.errors[replica] = reason

    def timed_out(self) -> None:
        """The deadline passed: what has not answered will not count."""
        self._timed_out = True

    def outcome(self) -> Outcome:
        """OK at W acks; FAILED when too many replicas failed for W to be reached, or on timeout."""
        if len(self.acks) >= self.w:
            return Outcome.OK
        reachable = len(self.replicas) - len(self.errors)
        if reachable < self.w or self._timed_out:
            return Outcome.FAILED
        return Outcome.PENDING

    def done(self) -> bool:
        """True once the answer is known."""
        return self.outcome() is not Outcome.PENDING

    def response(self) -> QuorumResult:
        """The answer to give the client."""
        outcome = self.outcome()
        reason = ""
        if outcome is Outcome.FAILED:
            reason = "timeout" if self._timed_out and len(self.replicas) - len(self.errors) >= self.w \
                else "too many replicas failed"
        return QuorumResult(outcome=outcome, needed=self.w, acks=len(self.acks),
                            errors=dict(self.errors), reason=reason)


@attrs.define
class GetCore:
    """Collects replica replies until R arrive; the answer reconciles every reply received."""

    replicas: Sequence[str]
    r: int
    lww: bool = False
    replies: dict[str, tuple[Sibling, ...]] = attrs.field(factory=dict)
    errors: dict[str, str] = attrs.field(factory=dict)
    _timed_out: bool = False

    def add_reply(self, replica: str, siblings: tuple[Sibling, ...]) -> None:
        """A replica answered with its sibling set (empty when it holds nothing)."""
        if replica not in self.errors:
            self.replies[replica] = siblings

    def add_error(self, replica: str, reason: str) -> None:
        """A replica failed or could not be reached."""
        if replica not in self.replies:
            self.errors[replica] = reason

    def timed_out(self) -> None:
        """The deadline passed."""
        self._timed_out = True

    def outcome(self) -> Outcome:
        """OK at R replies; FAILED when R can no longer be reached, or on timeout."""
        if len(self.replies) >= self.r:
            return Outcome.OK
        if len(self.replicas) - len(self.errors) < self.r or self._timed_out:
            return Outcome.FAILED
        return Outcome.PENDING

    def done(self) -> bool:
        """True once the answer is known."""
        return self.outcome() is not Outcome.PENDING

    def merged(self) -> tuple[Sibling, ...]:
        """The reconciled sibling set of every reply received so far."""
        merge = reconcile_lww if self.lww else reconcile
        return merge(*self.replies.values())

    def stale_replicas(self) -> list[str]:
        """Replicas whose reply lacks part of the reconciled set (targets for read repair)."""
        merged = self.merged()
        return [replica for replica, siblings in self.replies.items() if siblings != merged]

    def response(self) -> QuorumResult:
        """The answer to give the client."""
        outcome = self.outcome()
        reason = ""
        if outcome is Outcome.FAILED:
            reason = "timeout" if self._timed_out else "too many replicas failed"
        return QuorumResult(outcome=outcome, needed=self.r, acks=len(self.replies),
                            errors=dict(self.errors),
                            siblings=self.merged() if outcome is Outcome.OK else (),
                            reason=reason)
