"""Gossip membership (Dynamo §4.8): the Twisted shell around ``core.membership``.

Every ``interval`` seconds the node publishes its own transfer progress, takes the next step of its
own join or leave if one is due, and exchanges states with one random active peer, preferring peers
its failure detector thinks are up; when that peer is not a seed it also exchanges with a seed, so
nodes that joined through different seeds cannot form separate logical clusters. Both sides keep
the merge. A state that does not decode, or comes from another cluster, is logged and refused.

Joins and leaves are planned here (``plan_join`` at the seed, ``plan_leave`` at the leaving node),
and so are the dead-node operations: a replacement at the seed (the ``join`` peer operation with a
4th element ``{"replace": DEAD}``), a removal at the node asked. Each is spread by gossip like any
other change, and refused while an earlier one is still in progress among the members this node
sees up (a member it sees down, and hints held for it, never block a change), so at most one
ownership transition is in flight among reachable nodes. A dry run plans the change and answers
the plan (``core.membership.plan_document``) without adopting it.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import msgpack
from twisted.application.internet import TimerService
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from dynamod.core.addresses import split_host_port
from dynamod.core.membership import (
    ACTIVE,
    JOINING,
    ClusterState,
    MalformedState,
    MemberEntry,
    accept_gossip,
    plan_document,
    state_from_wire,
    state_to_wire,
    with_hint_counts,
)
from dynamod.net.operations import BadRequest, Conflict, Forbidden
from dynamod.net.peers import call_peer
from dynamod.security.identity import Principal


class MembershipError(ValueError):
    """A join or leave that cannot be done now; the state is unchanged. ``status`` is the HTTP code.
    (A ValueError, so the peer protocol answers it without logging a traceback.)"""

    def __init__(self, message: str, status: int = 409):
        super().__init__(message)
        self.status = status


class StateFile:
    """The node's last known cluster state, kept beside its data (replaced atomically)."""

    def __init__(self, path: str):
        self.path = path

    def load(self, partitions: int) -> ClusterState | None:
        try:
            with open(self.path, "rb") as handle:
                return state_from_wire(msgpack.unpackb(handle.read(), raw=False), partitions)
        except FileNotFoundError:
            return None

    def save(self, state: ClusterState) -> None:
        temporary = self.path + ".tmp"
        with open(temporary, "wb") as handle:
            handle.write(msgpack.packb(state_to_wire(state), use_bin_type=True))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, self.path)


class GossipService(TimerService):
    """Holds this node's view of the cluster and spreads it."""

    log = Logger()

    def __init__(self, me: str, state: ClusterState, peers: Mapping[str, Any], *, n: int, clock: IReactorTime,
                 interval: float, timeout: float, is_up: Callable[[str], bool], pending: Callable[[], int],
                 wall_clock_ms: Callable[[], int], on_change: Callable[[ClusterState, ClusterState], None],
                 seeds: Sequence[str] = (), rng: random.Random | None = None,
                 state_file: StateFile | None = None, filled: Callable[[], bool] = lambda: True):
        super().__init__(interval, self.round)
        self.clock = clock
        self.me = me
        self.state = state
        self.peers = peers
        self.n = n
        self.timeout = timeout
        self.is_up = is_up
        self.pending = pending
        self.wall_clock_ms = wall_clock_ms
        self.on_change = on_change
        self.seeds = tuple(seeds)
        self.rng = rng or random.Random()
        self.state_file = state_file
        #: Whether anti-entropy has filled this node's newly gained partitions (a replacement
        #: becomes a member only then).
        self.filled = filled
        #: Keys this node holds as hints for a node (the handoff service's count).
        self.local_hints: Callable[[str], int] = lambda owner: 0
        self.stats = {"rounds": 0, "exchanges": 0, "failed_exchanges": 0, "refused": 0}

    # -- the state -----------------------------------------------------------------------------

    def adopt(self, new: ClusterState) -> None:
        """Make ``new`` this node's state (persisted first, then applied)."""
        old = self.state
        if new == old:
            return
        if self.state_file is not None:
            self.state_file.save(new)
        self.state = new
        self.on_change(old, new)

    def refresh(self) -> None:
        """Publish this node's progress and take the next step of its own join or leave."""
        state = self.state.with_progress(self.me, self.pending(), self.wall_clock_ms())
        self.adopt(state.own_next_step(self.me, self.n, is_up=self.reachable, filled=self.filled()))

    def reachable(self, member: str) -> bool:
        """This node's view of who is up, itself included (the rule for changes with a node down)."""
        return member == self.me or self.is_up(member)

    # -- rounds --------------------------------------------------------------------------------

    def round(self) -> None:
        try:
            self._round()
        except Exception:  # noqa: BLE001 - one failed round must not end the schedule
            self.log.failure("gossip round failed")

    def _round(self) -> None:
        self.stats["rounds"] += 1
        self.refresh()
        partner = self._pick()
        if partner is None:
            return
        self.exchange(partner)
        seeds = [s for s in self.seeds if s != self.me and s != partner and s in self.peers]
        if partner not in self.seeds and seeds:
            self.exchange(self.rng.choice(sorted(seeds)))

    def _pick(self) -> str | None:
        others = [m.id for m in self.state.active() if m.id != self.me and m.id in self.peers]
        if not others:
            return None
        up = [node for node in others if self.is_up(node)]
        return self.rng.choice(up or others)

    def exchange(self, peer: str) -> defer.Deferred:
        """Push-pull with ``peer``: send our state, keep the merge with theirs."""
        call = call_peer(self.peers, peer, "gossip", state_to_wire(self.state), self.timeout)

        def answered(reply: Any) -> None:
            self.stats["exchanges"] += 1
            self.receive(reply, peer)

        def failed(failure: Any) -> None:
            self.stats["failed_exchanges"] += 1
            self.log.debug("gossip with {peer} failed: {reason}", peer=peer, reason=failure.getErrorMessage())

        return call.addCallbacks(answered, failed)

    def receive(self, data: Any, source: str) -> ClusterState:
        """Merge a gossiped state; raises ``MalformedState`` (logged, nothing merged) on bad or
        foreign state."""
        try:
            theirs = state_from_wire(data, self.state.ring.partitions)
            kept = accept_gossip(self.state, theirs, self.me)
            if kept is None:
                raise MalformedState(f"state of another cluster ({theirs.cluster}, this is {self.state.cluster})")
        except MalformedState as exc:
            self.stats["refused"] += 1
            self.log.warn("refused gossip from {source}: {reason}", source=source, reason=str(exc))
            raise
        self.adopt(kept)
        return self.state

    def handle_gossip(self, payload: Any, caller: Principal | None = None) -> dict[str, Any]:
        """The ``gossip`` peer operation: merge theirs, answer with ours. Over TLS the caller must
        be a node one of the two states lists (a node just admitted gossips before the others know
        it): a certificate of the CA alone does not make a stranger a member."""
        if caller is not None and caller.name not in self.state.members \
                and caller.name not in {entry[0] for entry in payload["members"]}:
            self.stats["refused"] += 1
            raise Forbidden(f"gossip from node {caller.name!r}, which neither state lists")
        return state_to_wire(self.receive(payload, caller.name if caller is not None else "a peer"))

    # -- joins and leaves ----------------------------------------------------------------------

    def answer_join(self, arguments: list) -> dict[str, Any] | defer.Deferred:
        """The ``join`` peer operation (``handle_join``), its refusals typed for the peer."""
        try:
            return self.handle_join(arguments)
        except MembershipError as exc:
            raise (BadRequest if exc.status == 400 else Conflict)(str(exc)) from None

    def handle_join(self, payload: Any) -> dict[str, Any]:
        """The ``join`` peer operation, at the seed: admit the caller and answer the new state.
        An optional 4th element ``{"replace": DEAD, "dry_run": bool}`` makes it a replacement of
        the dead member DEAD and/or a dry run; the answer is then ``{"state", "plan"}`` (a dry run's
        ``state`` is the current one, unchanged)."""
        if isinstance(payload, (list, tuple)) and len(payload) == 4:
            *payload, options = payload
            if not isinstance(options, dict) or not set(options) <= {"replace", "dry_run"} \
                    or not isinstance(options.get("dry_run", False), bool) \
                    or not isinstance(options.get("replace", ""), str):
                raise ValueError('a join\'s options are {"replace": DEAD, "dry_run": bool}')
        else:
            options = None
        try:
            member_id, peer, http = payload
        except (TypeError, ValueError) as exc:
            raise ValueError("a join names id, peer and http") from exc
        if not all(isinstance(x, str) and x for x in (member_id, peer, http)):
            raise ValueError("a join names id, peer and http")
        try:
            split_host_port(peer)
            split_host_port(http)
        except ValueError as exc:
            raise MembershipError(f"bad address in the join: {exc}", 400) from exc
        state = self.state
        dead = (options or {}).get("replace") or None
        if state.status_of(member_id) in ACTIVE:
            known = state.members[member_id]
            retried = (known.status == JOINING and (known.peer, known.http) == (peer, http)
                       and (dead is None or state.replaced.get(dead) == member_id))
            if not retried or (options or {}).get("dry_run"):
                raise MembershipError(f"{member_id} is already a member of this cluster")
            # The same join again while the node is still joining: this node admitted it but its
            # answer was lost (the joiner's request timed out and it asks again). Answer the
            # state, as the first time.
            self.log.info("{member} asked to join again: it is a member already, answering the state", member=member_id)
            return state_to_wire(state) if options is None else {"state": state_to_wire(state), "plan": None}
        clash = [m.id for m in state.active() if m.peer == peer and m.id != dead]
        if clash:
            raise MembershipError(f"{clash[0]} already uses peer address {peer}")
        entry = MemberEntry(member_id, peer, http)
        if dead is not None:
            self._check_dead(dead, "replace")
            if dead == member_id:
                raise MembershipError("a replacement needs an id of its own (the dead node's id stays retired)")
            self._refuse_during_transition("replace " + dead)
            planned = state.plan_replace(entry, dead, author=self.me)
        else:
            self._refuse_during_transition("join")
            if not state.ring.claim(member_id, self.n).partitions_of(member_id):
                raise MembershipError(f"{state.ring.partitions} partitions leave no share for member "
                                      f"{len(state.active()) + 1}: the cluster cannot grow (partitions are fixed)")
            planned = state.plan_join(entry, self.n, author=self.me)
        plan = plan_document("replace" if dead else "join", member_id, state, planned, self.n, self.reachable,
                             replaces=dead)
        dry_run = options is not None and options.get("dry_run")
        if not dry_run:
            self.adopt(planned)
        if dead is not None:
            self.log.warn("{member} ({peer}) replaces {dead}: it takes its {count} partitions", member=member_id,
                          peer=peer, dead=dead, count=len(planned.ring.partitions_of(member_id)))
        else:
            self.log.info("admitted {member} ({peer}); it claims {count} partitions", member=member_id, peer=peer,
                          count=len(self.state.ring.partitions_of(member_id)))
        if options is None:
            return state_to_wire(self.state)
        answer = {"state": state_to_wire(self.state), "plan": plan}
        if dead is None:
            return answer
        return self.hint_counts(dead).addCallback(lambda hints: {**answer, "plan": with_hint_counts(plan, hints)})

    def hint_counts(self, dead: str) -> defer.Deferred:
        """Keys held as hints for ``dead`` on every member this node sees up (itself included),
        None for one that does not answer: the warnings of a plan that removes or replaces it."""
        holders = [m.id for m in self.state.active() if m.id != dead and self.reachable(m.id)]

        def ask(holder: str) -> defer.Deferred:
            if holder == self.me:
                return defer.succeed(self.local_hints(dead))
            if holder not in self.peers:
                return defer.succeed(None)
            return call_peer(self.peers, holder, "hints_for", dead, self.timeout).addErrback(lambda _: None)

        asked = defer.gatherResults([ask(holder) for holder in holders])
        return asked.addCallback(lambda counts: dict(zip(holders, counts, strict=True)))

    def joined(self, data: Any, seed: str) -> None:
        """Take the state the seed answered a join with (``{"state", "plan"}`` or the bare state)."""
        if isinstance(data, dict) and "plan" in data:
            data = data.get("state")
        theirs = state_from_wire(data, self.state.ring.partitions)
        if theirs.status_of(self.me) not in ACTIVE:
            raise MembershipError(f"the seed at {seed} did not admit this node", 502)
        self.adopt(theirs)

    def leave(self, dry_run: bool = False) -> dict[str, Any]:
        """Start this node's departure: its partitions go to the others. Answers the plan."""
        if len(self.state.active()) <= 1:
            raise MembershipError("the last member of a cluster cannot leave")
        if self.state.status_of(self.me) != "member":
            raise MembershipError(f"this node is {self.state.status_of(self.me)}, not a member")
        self._refuse_during_transition("leave")
        state = self.state
        planned = state.plan_leave(self.me, self.n, author=self.me)
        plan = plan_document("leave", self.me, state, planned, self.n, self.reachable)
        if not dry_run:
            self.adopt(planned)
            self.log.info("leaving: {count} partitions go to the others", count=len(state.ring.partitions_of(self.me)))
        return plan

    def remove(self, dead: str, dry_run: bool = False) -> dict[str, Any]:
        """Remove the dead member ``dead``: it is ``left`` at once, its partitions go to the others.
        Refused while this node sees it up (the live path is ``leave``). Answers the plan."""
        self._check_dead(dead, "remove")
        state = self.state
        try:
            planned = state.plan_remove(dead, self.n, author=self.me)
        except ValueError as exc:
            raise MembershipError(str(exc)) from exc
        self._refuse_during_transition("remove " + dead)
        plan = plan_document("remove", dead, state, planned, self.n, self.reachable)
        if not dry_run:
            self.adopt(planned)
            self.log.warn("removed {dead}: its {count} partitions go to the others", dead=dead,
                          count=len(state.ring.partitions_of(dead)))
        return plan

    def replacement(self, owner: str) -> str | None:
        """The node that replaced the departed ``owner``, while it is active."""
        new = self.state.replaced.get(owner)
        return new if new is not None and self.state.status_of(new) in ACTIVE else None

    def _check_dead(self, dead: str, what: str) -> None:
        state = self.state
        if not isinstance(dead, str) or state.status_of(dead) not in ACTIVE:
            known = ", ".join(m.id for m in state.active())
            raise MembershipError(f"cannot {what} {dead!r}: not a member of this cluster (members: {known})")
        if dead == self.me:
            raise MembershipError(f"cannot {what} {dead}: it is the node asked (use leave)")
        if self.is_up(dead):
            raise MembershipError(f"cannot {what} {dead}: {self.me} sees it up (to take a live node out, "
                                  "use leave on it; stop it first to replace or remove it)")

    def _refuse_during_transition(self, what: str) -> None:
        state = self.state
        # The rule for changes with a member down: only members this node sees up are waited for.
        up = self.reachable
        busy = [m.id + " " + m.status for m in state.active() if m.status != "member" and up(m.id)]
        pending = {node: keys for node, keys in state.transfers_pending().items() if keys != 0 and up(node)}
        if busy or pending:
            detail = ", ".join(busy + [f"{node} holds {keys} keys to transfer" if keys is not None
                                       else f"{node} has not reported on ring version {state.ring_version} yet"
                                       for node, keys in sorted(pending.items())])
            raise MembershipError(f"cannot {what} while another change is in progress ({detail}); "
                                  "retry when `dynactl transfers` shows none")

    def report(self) -> dict[str, Any]:
        """Membership and transfer progress for /admin/status and /admin/transfers."""
        state = self.state
        return {"cluster": state.cluster, "ring_version": state.ring_version,
                "settled": state.settled(self.reachable), "settled_all": state.settled(),
                "pending": state.transfers_pending(),
                "down": sorted(m.id for m in state.active() if not self.reachable(m.id)),
                "replaced": dict(state.replaced), **self.stats}
