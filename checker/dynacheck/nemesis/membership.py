"""The ``membership`` nemesis: nodes join, leave, replace a killed node, or a killed node is removed,
while the workload runs (Dynamo §4.9: adding and removing storage nodes; Riak's ``cluster join``,
``leave``, ``force-replace`` and ``force-remove``).

The run has ``--spares K`` hosts beyond its initial members: installed, stopped, with themselves as
their only member. Each planned change is one of

* ``join``: a spare is emptied, started alone and joined through a live member's peer address;
* ``leave``: a member leaves (``POST /admin/leave``); it hands off everything and exits;
* ``replace``: a member is killed (``kill -9``) and, once a live member sees it down, a spare is
  started alone and joins with ``replace`` (it takes over exactly the dead node's partitions);
* ``remove``: a member is killed and, once seen down, removed (``POST /admin/remove``);

(a replace or a remove loses the dead node's copies, so both draw on the lost-copies budget of
``disk`` and ``corrupt``: ``dynacheck.nemesis.storage.DataLoss``)

chosen by ``next_change`` (pure) from a model of the membership the plan has reached so far: the
actions come in the fixed cycle ``ACTIONS``, skipping those the model cannot do (no spare to join;
no leave or remove that would take the cluster below its initial size), so a run of five changes
meets every action. A node that left or was removed or replaced is stopped and its data dir wiped
once its departure settled, and is a spare again.

The fault's ``start`` makes the change (a 409 refusal, "another change in progress", is retried for
``retry_seconds``, then the change is skipped and recorded as not run: nothing changed); its ``stop``
waits until every live member reports the transfers settled (and a leaving node has exited), then
retires the departed node. ``heal`` finishes a change whose stop did not. The member list of the
``Cluster`` follows: a node leaves it just before it departs (clients stop sending to it) and enters
it once its join was answered.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Sequence
from typing import Any

import attrs

from dynacheck.db import Cluster
from dynacheck.nemesis import Fault
from dynacheck.nemesis.storage import DataLoss, Skipped
from dynactl.deploy import cluster_health
from dynactl.remote import HostResult
from dynamod.client import ClientError, DynamoClient, NodeUnavailable
from dynamod.polling import wait_until

#: The order changes are planned in (each skipped while the planned membership cannot do it).
ACTIONS = ("join", "leave", "replace", "join", "remove")
#: Actions that kill the member they take out before the cluster is told.
KILLING = frozenset({"replace", "remove"})


@attrs.frozen
class Roster:
    """The membership a plan has reached: the members, the spares, and the next step of ``ACTIONS``."""

    members: tuple[str, ...]
    spares: tuple[str, ...]
    floor: int
    step: int = 0


def next_change(roster: Roster, rng: random.Random, avoid: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The next change after ``roster`` (pure): the next feasible action of the cycle, on nodes not in
    ``avoid`` (held by overlapping faults). ``nodes`` are the nodes the change takes; an ``action``
    of ``none`` says why nothing was feasible."""
    members = sorted(node for node in roster.members if node not in avoid)
    spares = sorted(node for node in roster.spares if node not in avoid)
    can_shrink = len(roster.members) > roster.floor
    for offset in range(len(ACTIONS)):
        action = ACTIONS[(roster.step + offset) % len(ACTIONS)]
        step = roster.step + offset
        if action == "join" and spares:
            node = rng.choice(spares)
            return {"action": "join", "node": node, "nodes": [node], "step": step}
        if action == "leave" and can_shrink and members:
            node = rng.choice(members)
            return {"action": "leave", "node": node, "nodes": [node], "step": step}
        if action == "replace" and spares and members:
            dead, node = rng.choice(members), rng.choice(spares)
            return {"action": "replace", "node": node, "dead": dead, "nodes": sorted([dead, node]), "step": step}
        if action == "remove" and can_shrink and members:
            dead = rng.choice(members)
            return {"action": "remove", "node": dead, "dead": dead, "nodes": [dead], "step": step}
    return {"action": "none", "nodes": [], "step": roster.step,
            "reason": f"no change possible: members {list(roster.members)}, spares {list(roster.spares)}, "
                      f"avoiding {sorted(avoid)}"}


def apply_change(roster: Roster, change: dict[str, Any]) -> Roster:
    """The membership once ``change`` is done (pure); a departed node is a spare again."""
    action = change.get("action")
    members, spares = list(roster.members), list(roster.spares)
    if action == "join":
        members.append(change["node"])
        spares.remove(change["node"])
    elif action == "leave":
        members.remove(change["node"])
        spares.append(change["node"])
    elif action == "replace":
        members[members.index(change["dead"])] = change["node"]
        spares.remove(change["node"])
        spares.append(change["dead"])
    elif action == "remove":
        members.remove(change["dead"])
        spares.append(change["dead"])
    return Roster(members=tuple(members), spares=tuple(sorted(spares)), floor=roster.floor,
                  step=int(change.get("step", roster.step)) + 1)


def mismatch(change: dict[str, Any], members: Sequence[str], spares: Sequence[str]) -> str | None:
    """Why ``change`` cannot be made on the actual membership (the plan assumed every earlier change
    ran; one that was skipped leaves the run elsewhere), or None (pure)."""
    action = change.get("action")
    if action == "none":
        return str(change.get("reason"))
    if action in ("join", "replace") and change["node"] not in spares:
        return f"{change['node']} is not a spare now (members {list(members)}, spares {list(spares)})"
    taken = change["node"] if action == "leave" else change.get("dead")
    if action in ("leave", "replace", "remove") and taken not in members:
        return f"{taken} is not a member now (members {list(members)})"
    if action in ("leave", "remove") and len(members) < 2:
        return f"{taken} is the last member"
    return None


def poll(check: Callable[[], str | None], seconds: float, interval: float = 0.5,
         clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> str | None:
    """Call ``check`` (None: done, else why not yet) until it is done or ``seconds`` passed; returns
    the last reason (None when done)."""
    return wait_until(check, seconds, interval=interval, done=lambda why: why is None, clock=clock, sleep=sleep)


class Refused(Exception):
    """The change was refused for good (not a 409 to retry), or failed: the message says why."""


class MembershipFault(Fault):
    """Joins, leaves, replacements and removals from a pool of spare hosts (see the module doc)."""

    name = "membership"
    takes_nodes = True

    def __init__(self, cluster: Cluster, losses: DataLoss | None = None, retry_seconds: float = 20.0,
                 settle_seconds: float = 45.0, down_seconds: float = 20.0, timeout: float = 5.0,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep):
        super().__init__(cluster)
        #: A replace or remove loses the dead node's copies: it shares disk's and corrupt's budget.
        self.losses = losses
        self.retry_seconds, self.settle_seconds, self.down_seconds = retry_seconds, settle_seconds, down_seconds
        self.timeout, self.clock, self.sleep = timeout, clock, sleep
        #: ``(host, expected members) -> (healthy, why not)``: how a settling change checks a member.
        self.health: Callable[[Any, list[str]], tuple[bool, str]] = cluster_health
        #: The membership the plan has reached (advanced by ``planned`` for each fault of the schedule).
        self.roster = Roster(members=tuple(cluster.ids), spares=tuple(sorted(cluster.spare_ids)),
                             floor=len(cluster.ids))
        #: The change made and not yet settled (what ``stop`` or ``heal`` finishes).
        self.pending: dict[str, Any] | None = None

    # -- planning (pure: the model only) ---------------------------------------------------------

    def plan(self, rng: random.Random, avoid: frozenset[str] = frozenset()) -> dict[str, Any]:
        return next_change(self.roster, rng, avoid)

    def planned(self, value: dict[str, Any]) -> None:
        """The schedule kept ``value``: the plan's membership moves on."""
        self.roster = apply_change(self.roster, value)

    def members_planned(self) -> frozenset[str]:
        """The members as far as the plan has got (other faults planned now may only take these)."""
        return frozenset(self.roster.members)

    # -- acting on the cluster -------------------------------------------------------------------

    def start(self, value: dict[str, Any]) -> dict[str, HostResult]:
        if self.pending is not None:  # the previous change never settled: finish it first
            results = self._finish(self.pending, self.settle_seconds)
            if self.pending is not None:
                raise Skipped(f"the previous change ({self.pending['action']} {self.pending['node']}) has not "
                              f"settled: {'; '.join(r.error or '' for r in results.values() if not r.ok)}")
        why = mismatch(value, self.cluster.ids, self.cluster.spare_ids)
        if why is not None:
            raise Skipped(why)
        action = value["action"]
        try:
            if action == "join":
                return self._join(value)
            if action == "leave":
                return self._leave(value)
            return self._take_out(value)
        except Refused as exc:
            return {value["node"]: HostResult(host=value["node"], ok=False, error=str(exc))}

    def stop(self, value: dict[str, Any]) -> dict[str, HostResult]:
        if self.pending is None or self.pending.get("id") != value.get("id"):
            return {}  # nothing of this change is left to finish
        return self._finish(self.pending, self.settle_seconds)

    def heal(self) -> dict[str, HostResult]:
        if self.pending is None:
            return {}
        return self._finish(self.pending, 3 * self.settle_seconds)

    # -- the changes -----------------------------------------------------------------------------

    def _join(self, value: dict[str, Any]) -> dict[str, HostResult]:
        node = value["node"]
        began = self.clock()
        started = self._start_spare(node)
        started += f" in {self.clock() - began:.1f}s"
        answer = self._join_through_seed(node, None)
        self.cluster.admit(node)
        self.pending = {**value, "since": self.clock()}
        return {node: HostResult(host=node, ok=True, stdout=f"{started}; joined: {_summary(answer)}")}

    def _leave(self, value: dict[str, Any]) -> dict[str, HostResult]:
        node = value["node"]
        position = self.cluster.depart(node)  # clients, polls and heals stop using it first
        try:
            answer = self._retrying(lambda client: client.leave(), node, f"leave of {node}")
        except BaseException:
            self.cluster.restore(node, position)
            raise
        self.pending = {**value, "since": self.clock()}
        return {node: HostResult(host=node, ok=True, stdout=f"leaving: {_summary(answer)}")}

    def _take_out(self, value: dict[str, Any]) -> dict[str, HostResult]:
        """replace or remove: kill the member, wait until a live one sees it down, then change."""
        dead, action = value["dead"], value["action"]
        if self.losses is not None and self.losses.forbidden is not None:
            raise Skipped(self.losses.forbidden)  # waiting would not change it
        if self.losses is not None:  # an earlier loss of copies must be known repaired first: wait a while
            why = poll(lambda: _skipped_because(self.losses.check), self.retry_seconds, interval=1.0,
                       clock=self.clock, sleep=self.sleep)
            if why is not None:
                raise Skipped(why)
        position = self.cluster.depart(dead)
        killed = self.cluster.service("kill", [dead])[dead]
        if not killed.ok:
            self.cluster.restore(dead, position)
            return {dead: killed}
        try:
            why = poll(lambda: self._seen_down(dead), self.down_seconds, clock=self.clock, sleep=self.sleep)
            if why is not None:
                raise Refused(f"no live member saw {dead} down within {self.down_seconds:g}s: {why}")
            if action == "replace":
                node = value["node"]
                self._start_spare(node)
                answer = self._join_through_seed(node, dead)
                self.cluster.admit(node, position)
            else:
                answer = self._retrying(lambda client: client.remove_node(dead), self._live_member(),
                                        f"remove of {dead}")
        except BaseException as exc:
            restarted = self.cluster.service("start", [dead])[dead]  # the change did not happen: it is a member
            self.cluster.restore(dead, position)
            if not restarted.ok:
                raise Refused(f"{action} of {dead} did not happen ({exc}), and restarting it failed: "
                              f"{restarted.line()}") from exc
            raise
        # The dead node is out of the ring: its host becomes a spare once emptied (it is down already).
        if self.losses is not None:
            self.losses.lost([dead])
        self._back_to_spare(dead)
        self.pending = {**value, "since": self.clock()}
        done = {dead: HostResult(host=dead, ok=True, stdout=f"killed, {action}d: {_summary(answer)}")}
        if action == "replace":
            done[value["node"]] = HostResult(host=value["node"], ok=True, stdout=f"replaced {dead}")
        return done

    def _finish(self, change: dict[str, Any], seconds: float) -> dict[str, HostResult]:
        """Wait until the change settled; then a node that left is stopped, emptied and a spare again."""
        node = change["node"]
        why = poll(lambda: self._unsettled(change), seconds, clock=self.clock, sleep=self.sleep)
        if why is not None:
            return {node: HostResult(host=node, ok=False, error=f"not settled after {seconds:g}s: {why}")}
        settled = f"settled {self.clock() - change['since']:.1f}s after the change"
        if change["action"] == "leave":
            spare = self._back_to_spare(node)
            if not spare.ok:
                return {node: spare}
        self.pending = None
        return {node: HostResult(host=node, ok=True, stdout=settled)}

    # -- helpers ---------------------------------------------------------------------------------

    def _client(self, node: str) -> DynamoClient:
        return DynamoClient(self.cluster.host(node).http, timeout=self.timeout, credentials=self.cluster.credentials)

    def _ask(self, node: str, call: Callable[[DynamoClient], Any]) -> Any:
        client = self._client(node)
        try:
            return call(client)
        finally:
            client.close()

    def _live_member(self) -> str:
        """The first member that answers its status."""
        for node in self.cluster.ids:
            try:
                self._ask(node, lambda client: client.status())
                return node
            except (ClientError, NodeUnavailable):
                continue
        raise Refused(f"no member answers (members {self.cluster.ids})")

    def _join_through_seed(self, node: str, dead: str | None) -> Any:
        """Have the started spare ``node`` join through a live member (replacing ``dead`` if
        given); returns the answer. When the join fails (the seed's answer may have been lost:
        a 502, or no answer), ``node`` itself is asked whether it is in a cluster now: it was
        started alone on an empty disk, so only its admission can have given it other members
        (the answer, or gossip from the members that took it). If it is, the change happened;
        else ``node`` is a spare again and the failure is raised (``dynacheck sim`` seed 9105:
        a replacement the seed took, whose answer was lost, was sent back to the spares while
        the ring kept it as an owner, and 4 keys never converged). The seed's own member list
        would not do: it may still list a node removed a moment before. A change refused with
        409 until the retries ran out is not looked up: a spare the members still list from
        before its removal takes their gossip, and would look admitted (seed 12025)."""
        seed = self.cluster.host(self._live_member()).peer
        what = f"replace of {dead} by {node}" if dead else f"join of {node}"
        try:
            return self._retrying(lambda client: client.join(seed, replace=dead) if dead else client.join(seed),
                                  node, what)
        except Refused as exc:  # not a 409 the retries ran out on: the seed's own refusal is trusted
            others = self._cluster_of(node)
            if others:
                return f"{what}: {exc}; but {node} is in a cluster with {', '.join(others)}: the change was made"
            self._back_to_spare(node)
            raise
        except BaseException:
            self._back_to_spare(node)
            raise

    def _cluster_of(self, node: str) -> list[str]:
        """The other members ``node`` lists, asked for up to ``timeout`` seconds while it lists
        none (gossip may bring it the state its join's lost answer held): empty when it never
        lists any, or never answered."""
        others: list[str] = []

        def ask() -> str | None:
            try:
                status = self._ask(node, lambda client: client.status())
            except (ClientError, NodeUnavailable) as exc:
                return f"{node} does not answer ({exc})"
            others[:] = sorted(entry.get("id") for entry in status.get("members", []) if entry.get("id") != node)
            return None if others else f"{node} is alone"

        poll(ask, self.timeout, interval=0.5, clock=self.clock, sleep=self.sleep)
        return others

    def _retrying(self, call: Callable[[DynamoClient], Any], node: str, what: str) -> Any:
        """``call`` on ``node``'s client; a 409 (another change in progress) is retried for
        ``retry_seconds``, then the change is skipped. Any other refusal or failure is final."""
        refusals: list[str] = []
        began = self.clock()

        def attempt() -> str | None:
            try:
                answers.append(self._ask(node, call))
                return None
            except ClientError as exc:
                if exc.status != 409:
                    raise Refused(f"{what} refused: {exc}") from exc
                refusals.append(str(exc.body.get("error", exc)))
                return refusals[-1]
            except NodeUnavailable as exc:
                raise Refused(f"{what} failed: {exc}") from exc
            except TypeError as exc:  # a client without the keyword (a daemon before replace/remove)
                raise Refused(f"{what}: this dynamod client cannot do it ({exc})") from exc
            except AttributeError as exc:
                raise Refused(f"{what}: this dynamod client cannot do it ({exc})") from exc

        answers: list[Any] = []
        why = poll(attempt, self.retry_seconds, interval=1.0, clock=self.clock, sleep=self.sleep)
        if why is not None:
            raise Skipped(f"{what} refused with 409 for {self.retry_seconds:g}s ({len(refusals)} tries): {why}")
        answer = answers[-1]
        if isinstance(answer, dict):
            answer = {**answer, "refused_409": len(refusals), "seconds": round(self.clock() - began, 2)}
        return answer

    def _start_spare(self, node: str) -> str:
        prepared = self.cluster.make_spare(node)[node]
        if not prepared.ok:
            raise Refused(f"preparing spare {node} failed: {prepared.line()}")
        started = self.cluster.service("start", [node])[node]
        if not started.ok:
            self._back_to_spare(node)
            raise Refused(f"starting spare {node} failed: {started.line()}")
        return f"started {node} alone"

    def _back_to_spare(self, node: str) -> HostResult:
        result = self.cluster.make_spare(node)[node]
        if result.ok:
            self.cluster.retire(node)
        return result

    def _seen_down(self, dead: str) -> str | None:
        """None once some live member's failure detector has ``dead`` down."""
        views = []
        for node in self.cluster.ids:
            try:
                status = self._ask(node, lambda client: client.status())
            except (ClientError, NodeUnavailable) as exc:
                views.append(f"{node} does not answer ({exc})")
                continue
            seen = {member.get("id"): member.get("status") for member in status.get("members", [])}
            if seen.get(dead) in ("down", None):
                return None
            views.append(f"{node} sees {dead} {seen.get(dead)}")
        return "; ".join(views) or "no member"

    def _unsettled(self, change: dict[str, Any]) -> str | None:
        """None once every member that answers reports no transfer pending, lists no member joining
        or leaving and no node the change took out, and a leaving node has exited. A removal known
        only to the member that made it is not settled: if that member dies before it gossips,
        the others still count the removed node in, and take its host back into the cluster
        when it starts again as a spare (``dynacheck sim --workload register`` seed 12025: their
        gossip made the emptied spare a member, n5 handed it copies and dropped its own, and
        the spare was emptied again)."""
        action = change["action"]
        gone = ({change.get("dead")} if action in ("remove", "replace")
                else {change["node"]} if action == "leave" else set())
        if action == "leave":
            running = self.cluster.service("status", [change["node"]])[change["node"]]
            if running.ok:
                return f"{change['node']} still runs (leaving)"
        problems = []
        answered = 0
        members = self.cluster.ids
        for node in members:
            healthy, why = self.health(self.cluster.host(node), [])
            try:
                status = self._ask(node, lambda client: client.status())
            except (ClientError, NodeUnavailable):
                continue  # a member down (another fault) does not block the change (README's rule)
            answered += 1
            moving = [f"{m.get('id')} {m.get('status')}" for m in status.get("members", [])
                      if m.get("status") in ("joining", "leaving")]
            still = sorted(gone & {m.get("id") for m in status.get("members", [])})
            if not healthy:
                problems.append(why)
            elif moving:
                problems.append(f"{node} sees {', '.join(moving)}")
            elif still:
                problems.append(f"{node} still lists {', '.join(still)}")
        if not answered:
            return "no member answers"
        return "; ".join(problems) or None


def _skipped_because(check: Callable[[], None]) -> str | None:
    """None when ``check`` passes, else the reason it raised ``Skipped`` with."""
    try:
        check()
    except Skipped as exc:
        return str(exc)
    return None


def _summary(answer: Any) -> str:
    """A short JSON of a join/leave/remove answer (its plan's moves counted, not listed)."""
    if not isinstance(answer, dict):
        return json.dumps(answer, default=str)[:300]
    shown = {key: value for key, value in answer.items() if key != "plan"}
    plan = answer.get("plan")
    if isinstance(plan, dict):
        shown["moves"] = len(plan.get("moves") or [])
        shown["warnings"] = plan.get("warnings") or []
    return json.dumps(shown, default=str)[:300]
