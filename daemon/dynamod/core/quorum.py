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


@attrs.define
class _QuorumCore:
    """What PUT and GET share: ``needed`` successes out of ``replicas``, failures, a deadline."""

    replicas: Sequence[str]
    needed: int
    errors: dict[str, str] = attrs.field(factory=dict)
    _timed_out: bool = False

    def _answered(self) -> set[str] | dict:
        raise NotImplementedError

    def add_error(self, replica: str, reason: str) -> None:
        """A replica refused, failed or could not be reached (ignored once it succeeded)."""
        if replica not in self._answered():
            self.errors[replica] = reason

    def timed_out(self) -> None:
        """The deadline passed: what has not answered will not count."""
        self._timed_out = True

    def outcome(self) -> Outcome:
        """OK at ``needed`` successes; FAILED as soon as too many replicas failed for that, or on
        timeout; else PENDING."""
        if len(self._answered()) >= self.needed:
            return Outcome.OK
        if len(self.replicas) - len(self.errors) < self.needed or self._timed_out:
            return Outcome.FAILED
        return Outcome.PENDING

    def done(self) -> bool:
        """True once the answer is known."""
        return self.outcome() is not Outcome.PENDING

    def _reason(self, outcome: Outcome) -> str:
        if outcome is not Outcome.FAILED:
            return ""
        if len(self.replicas) - len(self.errors) < self.needed:
            return "too many replicas failed"
        return "timeout"


@attrs.define
class PutCore(_QuorumCore):
    """Counts write acknowledgements until W arrive, or until W can no longer be reached."""

    acks: set[str] = attrs.field(factory=set)

    def _answered(self) -> set[str]:
        return self.acks

    def add_ack(self, replica: str) -> None:
        """A replica durably stored the version."""
        if replica not in self.errors:
            self.acks.add(replica)

    def response(self) -> QuorumResult:
        """The answer to give the client."""
        outcome = self.outcome()
        return QuorumResult(outcome=outcome, needed=self.needed, acks=len(self.acks),
                            errors=dict(self.errors), reason=self._reason(outcome))


@attrs.define
class GetCore(_QuorumCore):
    """Collects replica replies until R arrive; the answer reconciles every reply received."""

    lww: bool = False
    replies: dict[str, tuple[Sibling, ...]] = attrs.field(factory=dict)

    def _answered(self) -> dict[str, tuple[Sibling, ...]]:
        return self.replies

    def add_reply(self, replica: str, siblings: tuple[Sibling, ...]) -> None:
        """A replica answered with its sibling set (empty when it holds nothing)."""
        if replica not in self.errors:
            self.replies[replica] = siblings

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
        return QuorumResult(outcome=outcome, needed=self.needed, acks=len(self.replies),
                            errors=dict(self.errors),
                            siblings=self.merged() if outcome is Outcome.OK else (),
                            reason=self._reason(outcome))
