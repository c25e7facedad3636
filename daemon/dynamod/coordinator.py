"""Request coordination (Dynamo §4.5): the Twisted driver of the pure quorum cores.

Any node accepts any request. A GET asks the key's N replicas and answers after R replies with the
reconciled siblings. A PUT is coordinated by a replica of the key: the coordinator stamps the new
version against its local record (dots must be issued by a node that holds the key's record, see
``dynamod.core.versions``), commits it, then sends the whole resulting sibling set to the other
replicas and answers after W acknowledgements. A node that is not a replica forwards the PUT to the
first replica that answers. Deadlines come from the injected clock.

Targets are chosen by this node's failure detector, which can be a moment late (issue 13: a W=3
PUT right after an owner's SIGTERM was refused with four nodes up). So a replica request that
fails for want of a connection, or that a stopping node refuses, falls over to the next node up on
the key's ring walk, which stores the version with the hint of the owner it stands in for (sloppy
quorum, §4.6); a GET's read falls over the same way. Each node answers one request at most once,
so a quorum still counts R or W distinct nodes. A timeout does not fall over: the request's own
deadline has passed by then.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import attrs
from msgpack import packb
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from dynamod.core.encoding import context_from_wire, context_to_wire, siblings_to_wire
from dynamod.core.quorum import GetCore, Outcome, PutCore, QuorumResult
from dynamod.core.ring import Ring, partition_of
from dynamod.core.sizes import KeyTooLarge, check_growth
from dynamod.core.versions import (
    CausalContext,
    Record,
    Sibling,
    after_handoff,
    merge_into,
    put_version,
    with_hint,
)
from dynamod.net.operations import Code, PeerLimits, PeerOperations, PeerRefusal, local_error
from dynamod.net.peers import PeerClient, call_peer
from dynamod.net.protocol import PeerError, PeerUnavailable
from dynamod.security.identity import Principal
from dynamod.storage.engine import CorruptRecord, decode_stored
from dynamod.storage.store import Store

if TYPE_CHECKING:
    from dynamod.api.metrics import RequestStages


@attrs.frozen
class QuorumSettings:
    """The replication parameters every coordinator of the cluster uses."""

    n: int
    r: int
    w: int
    lww: bool = False
    timeout: float = 3.0
    max_context_entries: int = 64
    #: Bytes of stored versions past which a write that grows a key is logged and counted, and
    #: past which it is refused (``dynamod.core.sizes``).
    key_size_warning: int = 8 * 1024 * 1024
    max_key_size: int = 30 * 1024 * 1024


@attrs.frozen
class PutAnswer:
    """The outcome of a PUT: the quorum result, the context of the new version and its dot."""

    result: QuorumResult
    context: CausalContext | None = None
    dot: tuple[str, int] | None = None


class NotAReplica(PeerRefusal):
    """A forwarded PUT reached a node that does not hold the key."""

    code = Code.NOT_A_REPLICA


NOT_A_REPLICA = "is not a replica of this key"
#: Forwards a PUT may take before a non-replica refuses it (two covers one stale ring on each side).
MAX_FORWARDS = 2


class FalloverFailed(Exception):
    """A replica request failed at its target and at every fallback tried after it."""


def describe(failure: Failure) -> str:
    """A short reason for a failed replica request."""
    return f"{failure.type.__name__}: {failure.getErrorMessage()}"


def falls_over(failure: Failure) -> bool:
    """Whether a request that failed this way is worth sending to another node at once: the node
    could not be reached (refused, or the connection was lost), or it is stopping."""
    return bool(failure.check(PeerUnavailable)
                or (failure.check(PeerError) and failure.value.code == Code.NODE_STOPPING))


class Coordinator:
    """Coordinates GETs and PUTs for one node and answers its peers' replica requests."""

    log = Logger()

    def __init__(self, node_id: str, ring: Ring, store: Store, peers: Mapping[str, PeerClient],
                 settings: QuorumSettings, clock: IReactorTime, wall_clock_ms: Callable[[], int],
                 on_event: Callable[[str], None] = lambda event: None,
                 is_up: Callable[[str], bool] = lambda node: True,
                 admit: Callable[[int], bool] = lambda cost: True, limits: PeerLimits | None = None):
        self.node_id = node_id
        self.ring = ring
        self.store = store
        self.peers = peers
        self.settings = settings
        self.clock = clock
        self.wall_clock_ms = wall_clock_ms
        #: Called with "corrupt_record", "read_repair", "forwarded_put"... (the node counts them in its metrics).
        self.on_event = on_event
        #: This node's failure detector: peers judged down are replaced by fallbacks.
        self.is_up = is_up
        #: Admission control for background work (read repair here): may ``cost`` records move now?
        self.admit = admit
        #: The peer operations this node serves: the coordinator's own, and those other services
        #: register (``dynamod.net.operations``).
        self.operations = PeerOperations(limits or PeerLimits(n=settings.n, partitions=ring.partitions,
                                                              max_key_size=settings.max_key_size),
                                          stopping=lambda: self.stopping)
        self._serve_replica_requests()
        #: Set when the node begins to stop: operations declared ``refused_while_stopping`` are refused so
        #: that the peers fall over to other nodes (the node's own clients are still served).
        self.stopping = False
        # (replica, key) pairs already logged as corrupt: each is logged once, counted every time.
        self._corrupt_logged: set[tuple[str, bytes]] = set()

    def replicas(self, key: bytes) -> tuple[str, ...]:
        """The key's preference list (its N owners, up or not)."""
        return self.ring.preference_list(key, self.settings.n)

    def targets(self, key: bytes) -> dict[str, str | None]:
        """Sloppy quorum (Dynamo §4.6): the owners of ``key`` that are up, then for each owner that
        is down the next node up on the ring, mapped to the owner it stands in for."""
        def up(node: str) -> bool:
            return node == self.node_id or self.is_up(node)

        owners = self.replicas(key)
        if all(up(node) for node in owners):
            return dict.fromkeys(owners)  # the common case: every owner is up
        return dict(self.ring.sloppy_targets(key, self.settings.n, up))

    def _next_spare(self, key: bytes, taken: set[str]) -> str | None:
        """The first node on the key's ring walk that is up and not yet ``taken`` by this request."""
        for node in self.ring.walk(partition_of(key, self.ring.partitions)):
            if node not in taken and (node == self.node_id or self.is_up(node)):
                return node
        return None

    def _with_fallover(self, key: bytes, target: str, hint: str | None, taken: set[str],
                       send: Callable[[str, str | None], defer.Deferred]) -> defer.Deferred:
        """``send(target, hint)``; while the node sent to cannot be reached or is stopping, send to
        the next spare instead (added to ``taken``), carrying the owner ``target`` answers for as
        its hint. Fires with ``(node, hint, answer)`` of the node that answered; fails as the
        target did when no spare is up, else with every node's reason."""
        return _Fallover(self, key, hint if hint is not None else target, taken, send).attempt(target, hint)

    # -- reads ---------------------------------------------------------------------------------

    def _read_replica(self, replica: str, key: bytes, corrupt: set[str]) -> defer.Deferred:
        if replica == self.node_id:
            return self.store.get(key).addCallbacks(lambda record: record.siblings if record else (),
                                                    self._report_corrupt, errbackArgs=(replica, key, corrupt))
        return call_peer(self.peers, replica, "get", [key], self.settings.timeout).addCallback(
            self._siblings_of_raw, replica, key, corrupt)

    def _siblings_of_raw(self, raw: bytes | None, replica: str, key: bytes,
                         corrupt: set[str] | None = None) -> tuple[Sibling, ...]:
        """A replica's stored record, passed on undecoded, decoded (and validated) here."""
        try:
            record = decode_stored(key, raw)
        except CorruptRecord:
            self._report_corrupt(Failure(), replica, key, corrupt)
            raise
        return record.siblings if record else ()

    def _report_corrupt(self, failure: Failure, replica: str, key: bytes,
                        corrupt: set[str] | None = None) -> Failure:
        """A replica's record does not decode: its answer stays a failure (never "absent"), the
        read repairs it like a replica that lacked the versions, and a peer's is counted and
        logged once (this node's own are the store's to report)."""
        if failure.check(CorruptRecord):
            if corrupt is not None:
                corrupt.add(replica)
            if replica != self.node_id:
                self.report_corrupt_replica(replica, key, failure.value.reason)
        return failure

    def report_corrupt_replica(self, replica: str, key: bytes, reason: str) -> None:
        """Count a peer's record that does not decode, and log it once per (peer, key)."""
        self.on_event("corrupt_record")
        if (replica, key) not in self._corrupt_logged:
            if len(self._corrupt_logged) < 100_000:
                self._corrupt_logged.add((replica, key))
            self.log.error("replica {replica} holds a record of {key!r} that does not decode: {reason}",
                           replica=replica, key=key, reason=reason)

    def get(self, key: bytes, r: int, stages: RequestStages | None = None) -> defer.Deferred:
        """Fires with the ``QuorumResult`` of reading ``key`` from R of its N replicas (``stages``
        times a client's request: ``dynamod.api.metrics``)."""
        targets = self.targets(key)
        suspected = self._unreplaced(key, targets)
        core = GetCore(tuple(targets) + suspected, r, lww=self.settings.lww)
        corrupt: set[str] = set()
        # Who answered for whom: the targets, and the spares a failed target fell over to (read
        # repair sends each the hint it would have been written with).
        hints = dict(targets)
        taken = set(core.replicas)

        def read(node: str, hint: str | None) -> defer.Deferred:
            hints[node] = hint
            return self._read_replica(node, key, corrupt)

        def replied(_: str, answered: tuple[str, str | None, tuple[Sibling, ...]]) -> None:
            node, _hint, siblings = answered
            core.add_reply(node, siblings)

        requests = [(replica, self._with_fallover(key, replica, hint, taken, read), replied)
                    for replica, hint in {**targets, **dict.fromkeys(suspected)}.items()]
        return self._drive(core, requests, when_all_answered=lambda: self._repair(key, core, hints, corrupt),
                           stages=stages)

    def _repair(self, key: bytes, core: GetCore, targets: dict[str, str | None],
                corrupt: set[str] | frozenset[str] = frozenset()) -> None:
        """Read repair (Dynamo §4.5): once every replica has answered or failed, those whose reply
        lacked part of the reconciled versions (or held superseded ones), and those whose record
        does not decode, get them, in the background; the client's answer never waits for this."""
        replies = list(core.replies.values())
        if all(reply == replies[0] for reply in replies[1:]) and len(replies) == len(core.replicas):
            return  # the common case: every replica holds the same versions
        stale = core.stale_replicas() + sorted(corrupt)
        if not stale or not core.replies:
            return
        if not self.admit(len(stale)):
            self.on_event("read_repair_deferred")  # anti-entropy repairs it later
            return
        merged = core.merged()
        packed = packb(siblings_to_wire(merged), use_bin_type=True)
        for replica in stale:
            self.on_event("read_repair")
            if replica == self.node_id:
                repaired = self.store.update(key, self.merge_update(merged, targets[replica]))
            else:
                repaired = call_peer(self.peers, replica, "put", [key, packed, targets[replica]],
                                     self.settings.timeout)
            repaired.addErrback(lambda failure, replica=replica: self.log.debug(
                "read repair of {key!r} at {replica} failed: {reason}", key=key, replica=replica,
                reason=failure.getErrorMessage()))

    def merge_update(self, incoming: tuple[Sibling, ...], hint: str | None) -> Callable[..., tuple[Record, bool]]:
        """A store update merging ``incoming`` into the local record, held for ``hint`` if given."""
        lww = self.settings.lww
        return lambda record, _: (with_hint(merge_into(record, incoming, lww=lww), hint), True)

    # -- writes --------------------------------------------------------------------------------

    def put(self, key: bytes, value: bytes, context: CausalContext, w: int,
            deleted: bool = False, stages: RequestStages | None = None) -> defer.Deferred:
        """Fires with the ``PutAnswer`` of writing a new version of ``key``. A forwarded PUT's
        ``stages`` see the forward as its fan-out and its answer as the quorum's outcome."""
        targets = self.targets(key)
        if self.node_id not in targets:
            self.on_event("forwarded_put")
            if stages is not None:
                stages.fanned_out()
            forwarded = self._forward_put(list(targets), key, value, context, w, deleted, hops=1)
            return forwarded if stages is None else forwarded.addBoth(_passing(stages.quorum_reached))
        return self.coordinate_put(key, value, context, w, deleted, targets, stages)

    def coordinate_put(self, key: bytes, value: bytes, context: CausalContext, w: int,
                       deleted: bool, targets: dict[str, str | None] | None = None,
                       stages: RequestStages | None = None) -> defer.Deferred:
        """Stamp and store the version here, then replicate it to the other targets (owners that
        are up, and fallbacks carrying the owner they stand in for as a hint)."""
        targets = targets if targets is not None else self.targets(key)
        if self.node_id not in targets:
            return defer.fail(NotAReplica(f"{self.node_id} {NOT_A_REPLICA}"))
        suspected = self._unreplaced(key, targets)
        replicas = tuple(targets) + suspected
        my_hint = targets[self.node_id]
        timestamp = self.wall_clock_ms()

        def stamp(record: Record | None, allocate_actor: Callable[[], str]) -> tuple[Record, Any]:
            new_record, version = put_version(
                record, value=value, context=context, allocate_actor=allocate_actor,
                timestamp=timestamp, deleted=deleted, lww=self.settings.lww,
                max_context_entries=self.settings.max_context_entries)
            # Packed once, for the size bound and for every replica it is sent to.
            packed = packb(siblings_to_wire(new_record.siblings), use_bin_type=True)
            self._bound_size(key, record, len(packed))
            return with_hint(new_record, my_hint), (packed, version)

        try:
            (packed, version), committed = self.store.stage(key, stamp)
        except KeyTooLarge as refused:  # nothing was staged
            return defer.fail(refused)
        except Exception:  # noqa: BLE001 - a corrupt local record or a storage failure
            failure = Failure()
            self.log.failure("local write of {key!r} failed", failure, key=key)
            core = PutCore(replicas, w)
            core.add_error(self.node_id, describe(failure))
            for replica in replicas:
                if replica != self.node_id:
                    core.add_error(replica, "not sent: the coordinator could not stage the version")
            return defer.succeed(PutAnswer(core.response()))
        core = PutCore(replicas, w)
        # The local commit is one more replica acknowledgement: the other replicas get the new
        # sibling set at once instead of after it (one commit round per PUT, not two in a row).

        def ack(replica: str, _: Any) -> None:
            core.add_ack(replica)

        def send(node: str, hint: str | None) -> defer.Deferred:
            return call_peer(self.peers, node, "put", [key, packed, hint], self.settings.timeout)

        def acked(_: str, answered: tuple[str, str | None, Any]) -> None:
            core.add_ack(answered[0])  # the target, or the spare that stood in for it

        taken = set(replicas)
        requests = [(self.node_id, committed, ack)]
        requests += [(replica, self._with_fallover(key, replica, hint, taken, send), acked)
                     for replica, hint in {**targets, **dict.fromkeys(suspected)}.items() if replica != self.node_id]
        return self._drive(core, requests, stages=stages).addCallback(
            lambda result: PutAnswer(result, version.clock(), version.dot))

    def _bound_size(self, key: bytes, before: Record | None, size: int) -> None:
        """Log and count a write that leaves ``key`` past the warning size; refuse one that would
        grow it past ``max_key_size`` (raises ``KeyTooLarge``, so the store stages nothing)."""
        if size <= self.settings.key_size_warning:
            return
        if size > self.settings.max_key_size:
            old_size = len(packb(siblings_to_wire(before.siblings), use_bin_type=True)) if before else 0
            check_growth(size, old_size, self.settings.max_key_size)
        self.on_event("oversized_key_write")
        self.log.warn("key {key!r} holds {size} bytes of versions after a write, past key_size_warning "
                      "({warning}); write it with a read's context to replace its siblings",
                      key=key[:64], size=size, warning=self.settings.key_size_warning)

    def _unreplaced(self, key: bytes, targets: dict[str, str | None]) -> tuple[str, ...]:
        """Owners this node's failure detector judges down, with no node up to stand in for them.
        A request is sent to each anyway, as the owner: the detector may be wrong (a slow or lossy
        link delays heartbeats, a paused peer has resumed), and refusing at once would refuse a
        write a live owner could take (found by ``dynacheck sim``: under netem, a coordinator
        whose detector suspected a reachable owner failed 2 of 3 owners in 1.5 ms). An owner that
        is really down costs a refused connection, or the request's deadline when the quorum
        cannot be met without it."""
        if len(targets) >= self.settings.n:
            return ()
        covered = set(targets) | set(targets.values())
        return tuple(owner for owner in self.replicas(key) if owner not in covered)

    def _forward_put(self, candidates: list[str], key: bytes, value: bytes, context: CausalContext,
                     w: int, deleted: bool, hops: int) -> defer.Deferred:
        """Hand the PUT to the first replica that answers; one that cannot be reached, or is
        stopping, is skipped (it refuses before stamping anything). While a join or leave spreads,
        the replica's ring may differ from ours: one that no longer holds the key forwards the PUT
        once more by its own ring (``hops`` counts the forwards), and one that cannot is skipped."""
        payload = [key, value, context_to_wire(context), deleted, w, hops]
        return _Forward(self, candidates, payload, w).attempt()

    # -- hinted handoff ------------------------------------------------------------------------

    def hand_off(self, key: bytes, owner: str) -> defer.Deferred:
        """Deliver the versions held for ``owner`` (Dynamo §4.6) and, once it acknowledged them,
        drop the hint, and the record when no hint is left and this node does not own the key.
        Fires with True when the hint is gone."""
        def deliver(record: Record | None) -> Any:
            if record is None or owner not in record.hints:
                return True
            delivered = record.siblings
            packed = packb(siblings_to_wire(delivered), use_bin_type=True)
            sent = call_peer(self.peers, owner, "put", [key, packed, None], self.settings.timeout)
            return sent.addCallback(lambda _: self._forget_hint(key, owner, delivered))

        def unusable(failure: Failure) -> Any:
            # Nothing usable to hand off (the store noted it): drop the copy unless a valid
            # version has replaced it meanwhile; the key's other replicas hold the versions.
            failure.trap(CorruptRecord)
            return self.store.update(key, lambda record, _: (record, record is None or owner not in record.hints))

        return self.store.get(key).addCallbacks(deliver, unusable)

    def _forget_hint(self, key: bytes, owner: str, delivered: tuple[Sibling, ...]) -> defer.Deferred:
        keep_copy = self.node_id in self.replicas(key)
        self.on_event("handoff")

        def forget(record: Record | None, _: Any) -> tuple[Record | None, bool]:
            after = after_handoff(record, owner, delivered, keep_copy)
            return after, after is None or owner not in after.hints

        return self.store.update(key, forget)

    # -- quorum driving ------------------------------------------------------------------------

    def _drive(self, core: GetCore | PutCore, requests: list[tuple[str, defer.Deferred, Callable[..., None]]],
               when_all_answered: Callable[[], None] | None = None,
               stages: RequestStages | None = None) -> defer.Deferred:
        """Feed replica answers to ``core`` until it is done or the deadline passes; answers that
        come later still reach the core, and ``when_all_answered`` runs once every request has
        succeeded or failed. ``stages`` (a client's request) times the fan-out, each replica's
        answer and the quorum's outcome."""
        answer: defer.Deferred = defer.Deferred()
        if stages is not None:
            stages.fanned_out()
        outstanding = [len(requests)]

        def count_down() -> None:
            outstanding[0] -= 1
            if outstanding[0] == 0 and when_all_answered is not None:
                when_all_answered()

        def settle() -> None:
            if not answer.called and core.done():
                if timer.active():
                    timer.cancel()
                if stages is not None:
                    stages.quorum_reached()
                answer.callback(core.response())

        def expire() -> None:
            core.timed_out()
            settle()

        timer = self.clock.callLater(self.settings.timeout, expire)
        for replica, request, on_success in requests:
            def succeeded(value: Any, replica: str = replica, on_success: Callable = on_success) -> None:
                if stages is not None:
                    stages.answered(replica == self.node_id)
                on_success(replica, value)
                settle()
                count_down()

            def failed(failure: Failure, replica: str = replica) -> None:
                if stages is not None:
                    stages.answered(replica == self.node_id)
                core.add_error(replica, describe(failure))
                settle()
                count_down()

            request.addCallbacks(succeeded, failed)
        settle()
        return answer

    # -- peer requests -------------------------------------------------------------------------

    def handle_peer_request(self, op: str, payload: Any, caller: Principal | None = None) -> Any:
        """Answer another node's request (the ``PeerProtocol`` handler): checked against the
        declared operations, then handed to the one registered (``dynamod.net.operations``).
        ``caller`` is whom the connection's certificate names (None without TLS)."""
        return self.operations.answer(op, payload, caller)

    def _serve_replica_requests(self) -> None:
        register = self.operations.register
        register("ping", lambda _: True)
        register("get", lambda arguments: self.store.get_raw(arguments[0]))
        register("put", self._answer_put)
        register("coordinate_put", self._answer_coordinate_put)

    def _answer_put(self, arguments: list) -> defer.Deferred:
        key, siblings, hint = arguments
        return self.store.update(key, self.merge_update(siblings, hint))

    def _answer_coordinate_put(self, arguments: list) -> defer.Deferred:
        key, value, context, deleted, w, *hops = arguments
        if hops and self.node_id not in self.targets(key) and hops[0] < MAX_FORWARDS:
            put = self._forward_put(list(self.targets(key)), key, value, context, w, deleted, hops=hops[0] + 1)
        else:
            put = self.coordinate_put(key, value, context, w, deleted)
        return put.addCallback(_answer_to_wire)


class _Fallover:
    """One replica request and the spares it falls over to (``Coordinator._with_fallover``). A
    class, not two closures calling each other: those made a reference cycle per replica request
    that only the garbage collector could free (~80 objects a PUT and GET; the young collections
    that freed them paused the node for 5-20 ms each, and were most of the tail)."""

    __slots__ = ("coordinator", "key", "owner", "taken", "send", "reasons")

    def __init__(self, coordinator: Coordinator, key: bytes, owner: str, taken: set[str],
                 send: Callable[[str, str | None], defer.Deferred]):
        self.coordinator, self.key, self.owner, self.taken, self.send = coordinator, key, owner, taken, send
        self.reasons: list[str] = []

    def attempt(self, node: str, node_hint: str | None) -> defer.Deferred:
        return self.send(node, node_hint).addCallbacks(_answered_by, self.failed, callbackArgs=(node, node_hint),
                                                       errbackArgs=(node,))

    def failed(self, failure: Failure, node: str) -> Any:
        reasons = self.reasons
        reasons.append(f"{node}: {describe(failure)}")
        spare = self.coordinator._next_spare(self.key, self.taken) if falls_over(failure) else None
        if spare is None:
            return failure if len(reasons) == 1 else Failure(FalloverFailed("; then ".join(reasons)))
        self.taken.add(spare)
        self.coordinator.log.debug("{node} failed for {key!r} ({reason}): {spare} stands in for {owner}",
                                   node=node, key=self.key, reason=reasons[-1], spare=spare, owner=self.owner)
        return self.attempt(spare, self.owner)


class _Forward:
    """One forwarded PUT and the replicas it moves on to (``Coordinator._forward_put``); a class
    for the reason ``_Fallover`` is one."""

    __slots__ = ("coordinator", "candidates", "payload", "w", "errors")

    def __init__(self, coordinator: Coordinator, candidates: list[str], payload: list, w: int):
        self.coordinator, self.candidates, self.payload, self.w = coordinator, candidates, payload, w
        self.errors: dict[str, str] = {}

    def _failed_answer(self, reason: str) -> PutAnswer:
        return PutAnswer(QuorumResult(outcome=Outcome.FAILED, needed=self.w, acks=0, errors=self.errors,
                                      reason=reason))

    def attempt(self) -> defer.Deferred:
        if not self.candidates:
            return defer.succeed(self._failed_answer("no replica of the key could be reached"))
        replica = self.candidates.pop(0)
        coordinator = self.coordinator
        call = call_peer(coordinator.peers, replica, "coordinate_put", self.payload,
                         2 * coordinator.settings.timeout)
        # An answer that does not decode fails the forward like a refusal would.
        return call.addCallback(_answer_from_wire).addErrback(self.failed, replica)

    def failed(self, failure: Failure, replica: str) -> Any:
        self.errors[replica] = describe(failure)
        code = failure.value.code if failure.check(PeerError) else None
        if code == Code.KEY_TOO_LARGE:  # refused as it would have been here: the client's 413
            return Failure(local_error(failure.value))
        if falls_over(failure) or code == Code.NOT_A_REPLICA:
            return self.attempt()
        return self._failed_answer(f"forwarded to {replica}, which failed")


def _answered_by(answer: Any, node: str, hint: str | None) -> tuple[str, str | None, Any]:
    return node, hint, answer


def _passing(hook: Callable[[], None]) -> Callable[[Any], Any]:
    """A callback that calls ``hook`` and passes its result (or failure) on."""
    def call(result: Any) -> Any:
        hook()
        return result
    return call


def _answer_to_wire(answer: PutAnswer) -> dict:
    result = answer.result
    return {"outcome": result.outcome.value, "needed": result.needed, "acks": result.acks,
            "errors": result.errors, "reason": result.reason,
            "context": context_to_wire(answer.context) if answer.context is not None else None,
            "dot": list(answer.dot) if answer.dot is not None else None}


def _answer_from_wire(data: Any) -> PutAnswer:
    """A replica's answer to a forwarded PUT; raises ``ValueError`` on anything else."""
    try:
        result = QuorumResult(outcome=Outcome(data["outcome"]), needed=data["needed"], acks=data["acks"],
                              errors=data["errors"], reason=data["reason"])
        context = context_from_wire(data["context"]) if data["context"] is not None else None
        dot = data.get("dot")  # absent from nodes of an older release
        if not (type(result.needed) is int and type(result.acks) is int and isinstance(result.reason, str)
                and isinstance(result.errors, dict)
                and all(isinstance(k, str) and isinstance(v, str) for k, v in result.errors.items())
                and (not dot or (type(dot) is list and len(dot) == 2 and isinstance(dot[0], str)
                                 and type(dot[1]) is int))):
            raise ValueError("a field has the wrong type")
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ValueError(f"a coordinate_put answer that does not decode: {exc}") from None
    return PutAnswer(result, context, (dot[0], dot[1]) if dot else None)
