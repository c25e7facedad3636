"""The node-to-node operations: one declared list of what a node answers its peers.

Each ``Operation`` names the operation, the schema its payload must pass before any handler runs
(types, lengths and bounds; bounds that depend on the node's settings come from the
``PeerLimits`` the dispatcher is built with), and whether a stopping node refuses it (its peers
then send it elsewhere). Services register their handlers against the list (``PeerOperations``);
registering an operation that is not declared fails at start-up, and a declared operation nobody
registered is answered ``unknown_operation`` (a node may run without some services: the
temporary connection a joining node opens to its seed serves nothing).

A refusal travels in the ERROR frame as ``[code, message]``, or ``[code, message, details]``
when the code carries data (``key_too_large``: the size and the limit), and arrives as a
``PeerError`` with ``.code``: callers test the code, never the message. Handlers raise
``PeerRefusal`` subclasses, or one of the few exceptions ``typed`` maps to a code (a key over
its size bound, a storage that failed, a state of another cluster). Anything else is a bug in our
own handler: the peer is answered ``internal`` with a generic message, and the answering node logs
it once with its traceback. A payload that fails its schema is refused ``bad_request`` with one log
line and no effect: the handler never sees it.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs
from twisted.internet import defer
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from dynamod.core.addresses import split_host_port
from dynamod.core.encoding import DecodeError, context_from_wire, siblings_from_wire, unpack
from dynamod.core.keys import MAX_KEY_BYTES, key_problem
from dynamod.core.membership import MalformedState, state_from_wire
from dynamod.core.merkle import DEFAULT_DEPTH
from dynamod.core.sizes import KeyTooLarge
from dynamod.security.identity import Principal
from dynamod.storage.engine import EnvironmentFailed
from dynamod.storage.store import StorageBroken

# -- error codes ---------------------------------------------------------------------------------


class Code(enum.StrEnum):
    """Why a peer request was refused (the first element of an ERROR frame's payload)."""

    BAD_REQUEST = "bad_request"
    UNKNOWN_OPERATION = "unknown_operation"
    NODE_STOPPING = "node_stopping"
    NOT_A_REPLICA = "not_a_replica"
    KEY_TOO_LARGE = "key_too_large"
    CONFLICT = "conflict"
    UNAVAILABLE = "unavailable"
    FORBIDDEN = "forbidden"
    INTERNAL = "internal"


#: What each code means, and the level its refusal is logged at by the answering node (a
#: stopping node refuses every ping and replica request of its last moments: those are debug).
CODES: Mapping[Code, tuple[str, LogLevel]] = {
    Code.BAD_REQUEST: ("the payload does not match the operation's schema; nothing was done", LogLevel.warn),
    Code.UNKNOWN_OPERATION: ("no such operation is served here", LogLevel.warn),
    Code.NODE_STOPPING: ("the node is stopping: send the request to another node", LogLevel.debug),
    Code.NOT_A_REPLICA: ("this node does not replicate the key (the two nodes' rings differ)", LogLevel.debug),
    Code.KEY_TOO_LARGE: ("the write would grow the key past max_key_size; nothing was staged", LogLevel.debug),
    Code.CONFLICT: ("well formed, but this node's state refuses it: a membership change in progress, a stale "
                    "ring version, an unknown member, the state of another cluster", LogLevel.info),
    Code.UNAVAILABLE: ("this node cannot serve it now: its storage failed, or a node it needed did not answer",
                       LogLevel.info),
    Code.FORBIDDEN: ("the caller's certificate names another node than the one the request speaks for, or "
                     "one this cluster does not know", LogLevel.warn),
    Code.INTERNAL: ("a bug at the answering node, logged there with its traceback", LogLevel.error),
}

#: What the peer is told of a bug here (the log holds the rest).
INTERNAL_MESSAGE = "internal error at the answering node (logged there)"

#: Received codes and messages are cut to these lengths (they end up in logs and HTTP answers).
MAX_CODE_CHARS = 64
MAX_MESSAGE_CHARS = 2000


# -- errors --------------------------------------------------------------------------------------


class PeerRefusal(Exception):
    """An error a handler answers a peer with: it travels as ``[code, message]`` (plus
    ``details`` for codes that carry data)."""

    code: Code = Code.INTERNAL

    def __init__(self, message: str, details: Mapping[str, Any] | None = None, *, code: Code | None = None):
        super().__init__(message)
        self.message = message
        self.details = dict(details or {})
        if code is not None:
            self.code = code


class BadRequest(PeerRefusal):
    code = Code.BAD_REQUEST


class UnknownOperation(PeerRefusal):
    code = Code.UNKNOWN_OPERATION


class NodeStopping(PeerRefusal):
    code = Code.NODE_STOPPING

    def __init__(self, message: str = "node is stopping"):
        super().__init__(message)


class Conflict(PeerRefusal):
    code = Code.CONFLICT


class Unavailable(PeerRefusal):
    code = Code.UNAVAILABLE


class Forbidden(PeerRefusal):
    code = Code.FORBIDDEN


class PeerError(Exception):
    """The remote node refused a request: ``code`` says why (a ``Code`` value, or a code of a
    newer release this one does not know), ``message`` says it to a human."""

    def __init__(self, code: str, message: str, details: Mapping[str, Any] | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = dict(details or {})

    def __repr__(self) -> str:
        return f"PeerError({self.code!r}, {self.message!r})"

    @classmethod
    def from_wire(cls, payload: Any) -> PeerError:
        """The error an ERROR frame's payload stands for (one this release cannot read is ``internal``)."""
        if isinstance(payload, list) and len(payload) in (2, 3) and isinstance(payload[0], str) \
                and isinstance(payload[1], str) and (len(payload) == 2 or isinstance(payload[2], dict)):
            return cls(payload[0][:MAX_CODE_CHARS], payload[1][:MAX_MESSAGE_CHARS],
                       payload[2] if len(payload) == 3 else None)
        return cls(Code.INTERNAL, f"an error answer this node cannot read: {str(payload)[:200]}")


class PeerUnavailable(Exception):
    """The peer could not be reached, or the connection was lost before it answered."""


class PeerTimeout(Exception):
    """The peer did not answer within the deadline."""


class UndeclaredOperation(ValueError):
    """A handler registered for an operation that is not declared (a start-up error)."""


def error_payload(error: BaseException) -> list:
    """What an ERROR frame carries for ``error``: a refusal's code and message, else ``internal``."""
    if isinstance(error, PeerRefusal):
        message = error.message[:MAX_MESSAGE_CHARS]
        return [str(error.code), message, error.details] if error.details else [str(error.code), message]
    return [str(Code.INTERNAL), INTERNAL_MESSAGE]


def typed(error: BaseException) -> PeerRefusal | None:
    """The refusal a handler's exception stands for, or None for a bug. Storage failures are
    answered without their text (it names the engine's internals)."""
    if isinstance(error, PeerRefusal):
        return error
    if isinstance(error, KeyTooLarge):
        return PeerRefusal(str(error), {"size": error.size, "limit": error.limit}, code=Code.KEY_TOO_LARGE)
    if isinstance(error, MalformedState):  # the schema checked the shape: what is left is another cluster
        return Conflict(str(error))
    if isinstance(error, (StorageBroken, EnvironmentFailed)):
        return Unavailable("this node's storage failed")
    if isinstance(error, (PeerUnavailable, PeerTimeout, PeerError)):
        return Unavailable(f"a node this request needed did not serve it: {error}")
    return None


def local_error(error: PeerError) -> Exception:
    """The exception this node would have raised for a refusal that came back from a peer: a
    forwarded PUT the replica refused for size is ``KeyTooLarge`` here too (the HTTP layer's 413)."""
    size, limit = error.details.get("size"), error.details.get("limit")
    if error.code == Code.KEY_TOO_LARGE and type(size) is int and type(limit) is int:
        return KeyTooLarge(size, limit)
    return error


# -- limits --------------------------------------------------------------------------------------

#: A node id or a hint (member ids are short names).
MAX_NAME_CHARS = 256
#: Counters, versions and hop counts (msgpack ints reach 2**64-1; the store's are signed 64-bit).
MAX_COUNT = 2**63 - 1
#: Records in one ``put_many`` batch (the transfer service sends 64).
MAX_TRANSFER_BATCH = 10_000
#: An MD5 digest (``core.merkle.record_digest``).
DIGEST_BYTES = 16


@attrs.frozen
class PeerLimits:
    """The bounds of the node's settings that peer payloads are checked against."""

    n: int
    partitions: int
    #: The config's defaults; a node passes its own (``from_config``).
    max_value_size: int = 1024 * 1024
    max_key_size: int = 30 * 1024 * 1024
    tree_depth: int = DEFAULT_DEPTH

    @classmethod
    def from_config(cls, config: Any) -> PeerLimits:
        """The limits of a ``NodeConfig``."""
        return cls(n=config.n, partitions=config.partitions, max_value_size=config.max_value_size,
                   max_key_size=config.max_key_size)

    @property
    def last_partition(self) -> int:
        return self.partitions - 1

    @property
    def max_sibling_set(self) -> int:
        """A replica write carries the union of two replicas' sibling sets, each under
        ``max_key_size`` (config keeps twice that within the frame limit)."""
        return 2 * self.max_key_size

    @property
    def leaves(self) -> int:
        return 1 << self.tree_depth

    @property
    def last_leaf(self) -> int:
        return self.leaves - 1


# -- schemas -------------------------------------------------------------------------------------


class Malformed(Exception):
    """A payload that does not match its schema (answered as ``bad_request``)."""


Bound = int | str  # a number, or the name of a ``PeerLimits`` attribute


def _bound(bound: Bound, limits: PeerLimits) -> int:
    return bound if isinstance(bound, int) else getattr(limits, bound)


def _kind(value: Any) -> str:
    """A short description of a received value (never the value itself: it may be huge)."""
    if isinstance(value, (bytes, str, list, dict)):
        return f"{type(value).__name__} of length {len(value)}"
    if type(value) is int:
        return f"int {value}"
    return type(value).__name__ if value is not None else "nil"


class Schema:
    """Checks one value; ``check`` returns what the handler is given (the value, or its decoding)."""

    def check(self, value: Any, limits: PeerLimits) -> Any:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError


@attrs.frozen
class Nil(Schema):
    def check(self, value: Any, limits: PeerLimits) -> None:
        if value is not None:
            raise Malformed(f"expected nil, got {_kind(value)}")

    def describe(self) -> str:
        return "nil"


@attrs.frozen
class Bool(Schema):
    def check(self, value: Any, limits: PeerLimits) -> bool:
        if type(value) is not bool:
            raise Malformed(f"expected a bool, got {_kind(value)}")
        return value

    def describe(self) -> str:
        return "bool"


@attrs.frozen
class Int(Schema):
    """An int (never a bool) in ``low..high``."""

    low: Bound
    high: Bound

    def check(self, value: Any, limits: PeerLimits) -> int:
        if type(value) is not int:
            raise Malformed(f"expected an int, got {_kind(value)}")
        low, high = _bound(self.low, limits), _bound(self.high, limits)
        if not low <= value <= high:
            raise Malformed(f"{value} is outside {low}..{high}")
        return value

    def describe(self) -> str:
        return f"int {self.low}..{'2**63-1' if self.high == MAX_COUNT else self.high}"


@attrs.frozen
class Bytes(Schema):
    low: Bound
    high: Bound

    def check(self, value: Any, limits: PeerLimits) -> bytes:
        if type(value) is not bytes:
            raise Malformed(f"expected bytes, got {_kind(value)}")
        low, high = _bound(self.low, limits), _bound(self.high, limits)
        if not low <= len(value) <= high:
            raise Malformed(f"{len(value)} bytes, outside {low}..{high}")
        return value

    def describe(self) -> str:
        return f"bytes ({self.low}..{self.high})" if self.low != self.high else f"bytes ({self.low})"


#: Made once: a schema check runs for every peer request (an attrs instance costs ~1 us to make).
_KEY_BYTES = Bytes(1, MAX_KEY_BYTES)


@attrs.frozen
class Key(Schema):
    """A key as the HTTP API takes them: 1..1024 bytes of UTF-8."""

    def check(self, value: Any, limits: PeerLimits) -> bytes:
        _KEY_BYTES.check(value, limits)
        problem = key_problem(value)
        if problem is not None:
            raise Malformed(problem)
        return value

    def describe(self) -> str:
        return f"key (1..{MAX_KEY_BYTES} bytes of UTF-8)"


@attrs.frozen
class Text(Schema):
    """A non-empty string (a node id, a hint)."""

    high: int = MAX_NAME_CHARS

    def check(self, value: Any, limits: PeerLimits) -> str:
        if type(value) is not str or not 1 <= len(value) <= self.high:
            raise Malformed(f"expected a string of 1..{self.high} characters, got {_kind(value)}")
        return value

    def describe(self) -> str:
        return f"str (1..{self.high})"


@attrs.frozen
class Address(Schema):
    """``HOST:PORT``."""

    def check(self, value: Any, limits: PeerLimits) -> str:
        Text().check(value, limits)
        try:
            split_host_port(value)
        except ValueError as exc:
            raise Malformed(str(exc)) from exc
        return value

    def describe(self) -> str:
        return "HOST:PORT"


@attrs.frozen
class OrNil(Schema):
    schema: Schema

    def check(self, value: Any, limits: PeerLimits) -> Any:
        return None if value is None else self.schema.check(value, limits)

    def describe(self) -> str:
        return f"{self.schema.describe()} or nil"


@attrs.frozen
class ListOf(Schema):
    item: Schema
    most: Bound

    def check(self, value: Any, limits: PeerLimits) -> list:
        most = _bound(self.most, limits)
        if type(value) is not list or len(value) > most:
            raise Malformed(f"expected a list of at most {most} items, got {_kind(value)}")
        checked = []
        for index, item in enumerate(value):
            try:
                checked.append(self.item.check(item, limits))
            except Malformed as exc:
                raise Malformed(f"item {index}: {exc}") from None
        return checked

    def describe(self) -> str:
        return f"list of at most {self.most} × {self.item.describe()}"


@attrs.frozen
class Fields(Schema):
    """A list of named positional fields, the last ``optional`` of which may be left off (the
    handler is given the fields as sent, checked and decoded)."""

    fields: tuple[tuple[str, Schema], ...]
    optional: tuple[tuple[str, Schema], ...] = ()

    def check(self, value: Any, limits: PeerLimits) -> list:
        fields = self.fields + self.optional
        if type(value) is not list or not len(self.fields) <= len(value) <= len(fields):
            count = str(len(self.fields)) if not self.optional else f"{len(self.fields)}..{len(fields)}"
            raise Malformed(f"expected a list of {count} fields, got {_kind(value)}")
        checked = []
        for (name, schema), item in zip(fields, value, strict=False):
            try:
                checked.append(schema.check(item, limits))
            except Malformed as exc:
                raise Malformed(f"{name}: {exc}") from None
        return checked

    def describe(self) -> str:
        parts = [f"{name}: {schema.describe()}" for name, schema in self.fields]
        parts += [f"{name}?: {schema.describe()}" for name, schema in self.optional]
        return "[" + ", ".join(parts) + "]"


@attrs.frozen
class Options(Schema):
    """A map of some of the named options."""

    options: tuple[tuple[str, Schema], ...]

    def check(self, value: Any, limits: PeerLimits) -> dict:
        schemas = dict(self.options)
        if type(value) is not dict or not set(value) <= set(schemas):
            raise Malformed(f"expected a map of {', '.join(schemas)}, got {_kind(value)}")
        checked = {}
        for name, item in value.items():
            try:
                checked[name] = schemas[name].check(item, limits)
            except Malformed as exc:
                raise Malformed(f"{name}: {exc}") from None
        return checked

    def describe(self) -> str:
        return "{" + ", ".join(f"{name}?: {schema.describe()}" for name, schema in self.options) + "}"


_SIBLING_SET_BYTES = Bytes(1, "max_sibling_set")


@attrs.frozen
class SiblingSet(Schema):
    """A packed sibling set (``siblings_to_wire``, msgpack); the handler gets the siblings."""

    def check(self, value: Any, limits: PeerLimits) -> tuple:
        _SIBLING_SET_BYTES.check(value, limits)
        try:
            return siblings_from_wire(unpack(value))
        except DecodeError as exc:
            raise Malformed(f"the sibling set does not decode: {exc}") from None

    def describe(self) -> str:
        return "packed sibling set (bytes 1..max_sibling_set, decoded and validated)"


@attrs.frozen
class Context(Schema):
    """A causal context on the wire (``context_to_wire``); the handler gets the context."""

    def check(self, value: Any, limits: PeerLimits) -> Any:
        try:
            return context_from_wire(value)
        except DecodeError as exc:
            raise Malformed(str(exc)) from None

    def describe(self) -> str:
        return "causal context [vector, cloud]"


@attrs.frozen
class ClusterStateWire(Schema):
    """A gossiped cluster state (``state_to_wire``) of this cluster's partition count; the handler
    gets it as sent (it merges it)."""

    def check(self, value: Any, limits: PeerLimits) -> Any:
        try:
            state_from_wire(value, limits.partitions)
        except MalformedState as exc:
            # One that wraps a Python error of the decoder says no more than this to the peer.
            raise Malformed("not a cluster state" if exc.__cause__ is not None else str(exc)) from None
        return value

    def describe(self) -> str:
        return "cluster state (state_to_wire, of `partitions` partitions)"


@attrs.frozen
class TreeNodes(Schema):
    """``[partition, level, indices]``: nodes of one level of a partition's Merkle tree. Bounded
    by the ring and the tree's shape, so that no request makes the node build anything."""

    def check(self, value: Any, limits: PeerLimits) -> list:
        partition, level = Fields((("partition", Int(0, "last_partition")), ("level", Int(0, "tree_depth")),
                                   ("indices", ListOf(Int(0, "last_leaf"), "leaves")))).check(value, limits)[:2]
        indices = value[2]
        width = 1 << level
        if len(indices) > width or any(index >= width for index in indices):
            raise Malformed(f"indices: level {level} has nodes 0..{width - 1}")
        return [partition, level, indices]

    def describe(self) -> str:
        return "[partition: int 0..partitions-1, level: int 0..tree_depth, indices: list of at most 2**level × " \
               "int 0..2**level-1]"


# -- the operations ------------------------------------------------------------------------------


@attrs.frozen
class Operation:
    """One peer operation: its payload's schema, whether a stopping node refuses it, the codes
    its handler may answer besides those every operation may (``COMMON_CODES``), and what it does.

    Over TLS a peer speaks only for itself: ``speaks_for`` is the index of the argument naming
    the node the request is from (it must be the one the caller's certificate names), and a
    handler that judges the caller itself (gossip) is declared ``takes_caller`` and gets it."""

    name: str
    schema: Schema
    refused_while_stopping: bool
    codes: tuple[Code, ...]
    doc: str
    speaks_for: int | None = None
    takes_caller: bool = False


#: Any operation may be refused for these.
COMMON_CODES = (Code.BAD_REQUEST, Code.UNKNOWN_OPERATION, Code.INTERNAL)

_KEY = ("key", Key())
_HINT = ("hint", OrNil(Text()))

OPERATIONS: tuple[Operation, ...] = (
    Operation("ping", Nil(), True, (Code.NODE_STOPPING,),
              "liveness probe (the failure detector's heartbeat); answers true"),
    Operation("get", Fields((_KEY,)), True, (Code.NODE_STOPPING, Code.UNAVAILABLE),
              "a replica read: the key's stored record, undecoded bytes, or nil"),
    Operation("put", Fields((_KEY, ("siblings", SiblingSet()), _HINT)), True, (Code.NODE_STOPPING, Code.UNAVAILABLE),
              "a replica write: merge the siblings into the local record (held for the hint's owner if one is "
              "named); answers once durable"),
    Operation("coordinate_put",
              Fields((_KEY, ("value", Bytes(0, "max_value_size")), ("context", Context()), ("deleted", Bool()),
                      ("w", Int(1, "n"))), optional=(("hops", Int(0, MAX_COUNT)),)),
              True, (Code.NODE_STOPPING, Code.NOT_A_REPLICA, Code.KEY_TOO_LARGE, Code.UNAVAILABLE),
              "a PUT forwarded by a node that does not replicate the key: stamp, store and replicate it "
              "here (or forward it once more while hops allow); answers the PUT's outcome"),
    Operation("aae_hashes", TreeNodes(), False, (),
              "anti-entropy: the hashes of the given nodes of a level of a partition's Merkle tree"),
    Operation("aae_records", Fields((("partition", Int(0, "last_partition")),
                                     ("leaves", ListOf(Int(0, "last_leaf"), "leaves")))),
              False, (Code.UNAVAILABLE,),
              "anti-entropy: [key, stored record] of every key in the given leaves of a partition"),
    Operation("hints_for", Text(), False, (),
              "keys held here as hints for the named node (the warnings of a replace or remove plan)"),
    Operation("goodbye", Fields((("node", Text()),)), False, (Code.CONFLICT, Code.FORBIDDEN),
              "the named peer is stopping: take it for down until it answers again", speaks_for=0),
    Operation("gossip", ClusterStateWire(), False, (Code.CONFLICT, Code.FORBIDDEN),
              "merge the sender's cluster state; answers this node's (over TLS, only from a node that one "
              "of the two states lists)", takes_caller=True),
    Operation("join",
              Fields((("id", Text()), ("peer", Address()), ("http", Address())),
                     optional=(("options", Options((("replace", Text()), ("dry_run", Bool())))),)),
              False, (Code.CONFLICT, Code.FORBIDDEN),
              "at a seed: admit the sender (or replace a dead member with it); answers the new state, "
              "or {state, plan} when options are given", speaks_for=0),
    Operation("cluster_info", Nil(), False, (),
              "what a joining node checks first: cluster name, n, partitions, mode, members"),
    Operation("reap", Fields((_KEY, ("digest", Bytes(DIGEST_BYTES, DIGEST_BYTES)))), False, (Code.UNAVAILABLE,),
              "drop the key's record if it holds exactly the tombstones of this digest; answers whether it did"),
    Operation("put_many",
              Fields((("ring_version", Int(0, MAX_COUNT)),
                      ("entries", ListOf(Fields((_KEY, ("siblings", SiblingSet()))), MAX_TRANSFER_BATCH))),
                     optional=(_HINT,)),
              False, (Code.CONFLICT, Code.UNAVAILABLE),
              "an ownership transfer batch: merge each key's siblings here (held for the hint's owner if "
              "named); refused when this node knows a newer ring; answers the count"),
)


def describe_operations(operations: Sequence[Operation] = OPERATIONS) -> str:
    """The declared operations as text (the README's table, a report)."""
    lines = []
    for op in operations:
        codes = ", ".join(op.codes) or "-"
        lines.append(f"{op.name}{' (refused while stopping)' if op.refused_while_stopping else ''}\n"
                     f"    payload: {op.schema.describe()}\n    codes: {codes}\n    {op.doc}")
    return "\n".join(lines)


#: ``handler(arguments) -> answer or Deferred``; ``arguments`` is the payload as checked (and
#: decoded) by the operation's schema (``handler(arguments, caller)`` for ``takes_caller``).
Handler = Callable[..., Any]


class PeerOperations:
    """Answers peer requests: the declared operations, each with the handler registered for it."""

    log = Logger()

    def __init__(self, limits: PeerLimits, stopping: Callable[[], bool] = lambda: False,
                 operations: Sequence[Operation] = OPERATIONS):
        self.limits = limits
        self.stopping = stopping
        self._declared = {op.name: op for op in operations}
        self._handlers: dict[str, Handler] = {}

    def register(self, name: str, handler: Handler) -> None:
        """Serve ``name`` with ``handler``; an undeclared or already served name is a start-up error."""
        if name not in self._declared:
            raise UndeclaredOperation(f"{name!r} is not a declared peer operation (dynamod.net.operations)")
        if name in self._handlers:
            raise UndeclaredOperation(f"peer operation {name!r} already has a handler")
        self._handlers[name] = handler

    def unhandled(self) -> list[str]:
        """Declared operations no handler was registered for."""
        return [name for name in self._declared if name not in self._handlers]

    def answer(self, op: str, payload: Any, caller: Principal | None = None) -> Any:
        """Answer one request (the ``PeerProtocol`` handler): the handler's answer, or a Deferred
        of it; raises (or fails with) a ``PeerRefusal``. ``caller`` is whom the connection's
        certificate names (None without TLS)."""
        operation, handler = self._declared.get(op), self._handlers.get(op)
        if operation is None or handler is None:
            raise self._refused(op, UnknownOperation(f"unknown peer operation {op[:64]!r}"))
        if operation.refused_while_stopping and self.stopping():
            raise self._refused(op, NodeStopping())
        try:
            arguments = operation.schema.check(payload, self.limits)
        except Malformed as exc:
            raise self._refused(op, BadRequest(f"{op}: {exc}")) from None
        except Exception:  # noqa: BLE001 - a schema that does not turn bad input into Malformed: a bug
            raise self._failed(op, Failure()) from None
        if caller is not None and operation.speaks_for is not None and arguments[operation.speaks_for] != caller.name:
            raise self._refused(op, Forbidden(f"{op} for {str(arguments[operation.speaks_for])[:64]!r} from a "
                                              f"connection whose certificate names {caller.name!r}"))
        try:
            answer = handler(arguments, caller) if operation.takes_caller else handler(arguments)
        except Exception:  # noqa: BLE001 - typed, or logged as the bug it is
            raise self._failed(op, Failure()) from None
        if isinstance(answer, defer.Deferred):
            return answer.addErrback(self._failed_later, op)
        return answer

    def _failed_later(self, failure: Failure, op: str) -> None:
        raise self._failed(op, failure)

    def _failed(self, op: str, failure: Failure) -> PeerRefusal:
        refusal = typed(failure.value)
        if refusal is not None:
            return self._refused(op, refusal)
        self.log.failure("peer operation {op} failed after its payload passed its schema", failure, op=op)
        return PeerRefusal(INTERNAL_MESSAGE, code=Code.INTERNAL)

    def _refused(self, op: str, refusal: PeerRefusal) -> PeerRefusal:
        """Log a refusal once, at its code's level."""
        _, level = CODES.get(refusal.code, ("", LogLevel.warn))
        self.log.emit(level, "refused peer request {op}: {code}: {reason}", op=op[:64], code=str(refusal.code),
                      reason=refusal.message[:500])
        return refusal
