"""Workload ops against the HTTP API, turned into history completions (Jepsen's client).

``add`` (cart) is a read-modify-write: GET, union the siblings' items, add one, PUT with the
context. ``remove`` (cart) is one too: GET, drop the item ``pick`` chooses among those read, PUT the
rest with the context, or DELETE with the context when nothing would be left; its completion's
``value`` is the item, and ``f`` is ``delete`` when it deleted. A remove whose read found no item
writes nothing and completes ``fail`` (``error`` says so: certainly no write); a DELETE whose
outcome is unknown still carries ``read_clock`` (what its tombstone would have seen). ``write``
(register) is a blind PUT. ``read`` is a GET. What the outcome means:

* a GET that fails means nothing happened: ``fail``;
* a PUT answered 503, timed out or cut off mid-way *may* have been stored: ``info``, never ``fail``;
* a PUT refused before it was sent (connection refused) or with a 4xx certainly was not: ``fail``;
  any other error status (a 500) may come after the write was stored: ``info``. A DELETE is a PUT.

An ok read also carries ``context_clock``, the CLOCK its context encodes: it holds the tombstones
the read does not return as versions, so a write's ``read_clock`` (what it may claim to have seen)
is the union of the live versions' clocks and that one. An ok RMW write's ``version`` carries the
``elements`` it wrote (its value), ``deleted`` for a DELETE.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

from dynacheck.history import FAIL, INFO, OK, Op
from dynamod.client import ClientError, Credentials, DynamoClient, GetResult, NodeUnavailable, QuorumError
from dynamod.core.encoding import DecodeError, decode_context

DEFAULT_TIMEOUT_SECONDS = 5.0


def encode_elements(elements: set[int] | list[int]) -> bytes:
    """A cart or register value: sorted comma-separated integers."""
    return ",".join(str(element) for element in sorted(elements)).encode()


def decode_elements(value: bytes) -> list[int]:
    """The integers of a stored value; anything else in it is ignored (and shows as a lost element)."""
    return [int(token) for token in value.split(b",") if token.strip().isdigit()]


def clock_of(document: dict[str, Any]) -> dict[str, Any]:
    """The history's CLOCK shape from a version document of the API."""
    return {"vector": dict(document.get("vector", {})), "cloud": [list(dot) for dot in document.get("cloud", [])]}


def context_clock(context: str) -> dict[str, Any] | None:
    """The CLOCK a context string encodes (the new version's, for an ``X-Context`` of a PUT)."""
    try:
        decoded = decode_context(context)
    except DecodeError:
        return None
    return {"vector": dict(decoded.vector), "cloud": sorted([actor, n] for actor, n in decoded.cloud)}


def version_entry(value: bytes, version: dict[str, Any]) -> dict[str, Any]:
    """The history's ``{"dot", "clock", "elements"}`` of one sibling, from its value and the API's
    version document (a GET's ``versions`` entry or a replica sibling's ``clock``)."""
    return {"dot": list(version["dot"]), "clock": clock_of(version), "elements": decode_elements(value)}


def versions_of(read: GetResult) -> list[dict[str, Any]]:
    """One version entry per live sibling of a read."""
    return [version_entry(value, version) for value, version in zip(read.siblings, read.versions, strict=False)]


def elements_of(versions: list[dict[str, Any]]) -> list[int]:
    """The cart's items as read: the union of every live sibling's elements, sorted."""
    return sorted({element for version in versions for element in version["elements"]})


def union_clock(versions: list[dict[str, Any]]) -> dict[str, Any]:
    """The CLOCK holding every dot the given versions have seen (per-actor maximum, union of clouds):
    what a write whose context came from a read of these versions may claim to have seen."""
    vector: dict[str, int] = {}
    cloud: set[tuple[str, int]] = set()
    for version in versions:
        for actor, counter in version["clock"].get("vector", {}).items():
            vector[actor] = max(counter, vector.get(actor, 0))
        cloud.update((actor, counter) for actor, counter in version["clock"].get("cloud", []))
    return {"vector": vector, "cloud": sorted([actor, counter] for actor, counter in cloud
                                              if counter > vector.get(actor, 0))}


def read_versions(read: GetResult, versions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The live versions of ``read`` plus, when its context decodes, a dot-less entry holding the
    context's clock: the tombstones a read does not return as versions are in what a write made
    with that context has seen (``read_clock``), but it supersedes only the live dots."""
    clock = context_clock(read.context) if read.context else None
    return versions + ([{"clock": clock}] if clock is not None else [])


def _unreachable_before_sending(exc: NodeUnavailable) -> bool:
    return isinstance(exc.__cause__, ConnectionRefusedError)


#: What an op's steps ask for: ``(node, method, args)``, a call of that node's client (``get``,
#: ``write``, ``delete`` of ``DynamoClient``); the answer is sent back in, a failure thrown in.
Ask = tuple[str, str, tuple[Any, ...]]
#: An op's steps: a generator of Asks that returns the op's completion.
Steps = Generator[Ask, Any, Op]


def drive(steps: Steps, answer: Callable[[Ask], Any]) -> Op:
    """Run ``steps`` to their completion, answering each Ask at once with ``answer(ask)``."""
    reply: Any = None
    failure: BaseException | None = None
    while True:
        try:
            ask = steps.throw(failure) if failure is not None else steps.send(reply)
        except StopIteration as done:
            return done.value
        try:
            reply, failure = answer(ask), None
        except Exception as exc:  # noqa: BLE001 - thrown back into the steps, which decide
            reply, failure = None, exc


class Client:
    """Executes ops for one worker thread (Dynamo's client-side routing): each op goes to the
    thread's current node; when that node refuses the connection (nothing was done) the op is
    tried on the next node, and after a failure or an unknown outcome the thread moves on to the
    next node for its later ops, so the cluster stays under load through every fault. An op that
    names its ``node`` (the final reads) goes there only. A secured cluster is reached with
    ``credentials``.

    What an op does is written once, as ``steps`` (a generator of calls on a node's client):
    calling the Client runs them against the nodes' ``DynamoClient``s; the simulator
    (``dynacheck sim``) runs the same steps on its own clock and network."""

    def __init__(self, addresses: dict[str, str], default_node: str, timeout: float = DEFAULT_TIMEOUT_SECONDS,
                 failover: bool = True, credentials: Credentials | None = None):
        self.addresses, self.timeout, self.failover = addresses, timeout, failover
        self.credentials = credentials
        self.nodes = list(addresses)
        self.current = self.nodes.index(default_node) if default_node in self.nodes else 0
        self.default_node = default_node
        self.connections: dict[str, DynamoClient] = {}

    def _client(self, node: str) -> DynamoClient:
        if node not in self.connections:
            self.connections[node] = DynamoClient(self.addresses[node], timeout=self.timeout,
                                                  credentials=self.credentials)
        return self.connections[node]

    @property
    def current_node(self) -> str:
        return self.nodes[self.current]

    def node_for(self, op: Op) -> str:
        return op.get("node") or self.current_node

    def __call__(self, op: Op) -> Op:
        return drive(self.steps(op), lambda ask: getattr(self._client(ask[0]), ask[1])(*ask[2]))

    def steps(self, op: Op) -> Steps:
        """The op's calls, with the failover between nodes; returns its completion."""
        if op.get("final") or not self.failover:
            completion = yield from self._run(self.node_for(op), op)
            return {**completion, "node": self.node_for(op)}
        completion: Op = {}
        tried = 0
        for offset in range(len(self.nodes)):
            node = self.nodes[(self.current + offset) % len(self.nodes)]
            completion = {**(yield from self._run(node, op)), "node": node}
            tried += 1
            if not completion.pop("refused", False):
                break
        else:
            completion.pop("refused", None)
        # The next op starts where this one was served, or on the next node after a failure.
        self.current = (self.current + tried - (completion["type"] == OK)) % len(self.nodes)
        return completion

    def _run(self, node: str, op: Op) -> Steps:
        if op["f"] == "read":
            return (yield from self.read(node, op))
        if op["f"] == "add":
            return (yield from self.add(node, op))
        if op["f"] == "remove":
            return (yield from self.remove(node, op))
        if op["f"] == "write":
            return (yield from self.write(node, op, context=None, versions=[], elements=[op["value"]], blind=True))
        return {"type": FAIL, "error": f"unknown op {op['f']!r}"}

    def read(self, node: str, op: Op) -> Steps:
        try:
            result = yield node, "get", (op["key"],)
        except (ClientError, NodeUnavailable) as exc:
            return {"type": FAIL, "error": str(exc), **_refused(exc)}
        versions = versions_of(result)
        elements = elements_of(versions)
        completion: Op = {"type": OK, "value": elements, "versions": versions}
        clock = context_clock(result.context) if result.context else None
        if clock is not None:
            completion["context_clock"] = clock
        return completion

    def add(self, node: str, op: Op) -> Steps:
        try:
            read = yield node, "get", (op["key"],)
        except (ClientError, NodeUnavailable) as exc:
            return {"type": FAIL, "error": f"read before the add: {exc}", **_refused(exc)}
        versions = versions_of(read)
        items = set(elements_of(versions)) | {op["value"]}
        return (yield from self.write(node, op, context=read.context or None,
                                      versions=read_versions(read, versions), elements=items))

    def remove(self, node: str, op: Op) -> Steps:
        """Drop one item the read returned; DELETE with the context when it was the last one."""
        try:
            read = yield node, "get", (op["key"],)
        except (ClientError, NodeUnavailable) as exc:
            return {"type": FAIL, "error": f"read before the remove: {exc}", **_refused(exc)}
        versions = versions_of(read)
        items = elements_of(versions)
        if not items:
            # Nothing was written, so nothing can have changed: certainly a no-op, not an unknown.
            return {"type": FAIL, "error": "nothing to remove: the read found an empty cart", "empty": True}
        item = items[int(op.get("pick") or 0) % len(items)]
        rest = [element for element in items if element != item]
        completion = yield from self.write(node, op, context=read.context or None,
                                           versions=read_versions(read, versions), elements=rest, delete=not rest)
        completion["value"] = item
        if not rest:
            completion["f"] = "delete"
        return completion

    def write(self, node: str, op: Op, context: str | None, versions: list[dict[str, Any]],
              elements: Any, delete: bool = False, blind: bool = False) -> Steps:
        try:
            if delete:
                written = yield node, "delete", (op["key"], context)
            else:
                written = yield node, "write", (op["key"], encode_elements(elements), context)
        except QuorumError as exc:
            return {"type": INFO, "error": str(exc), **_may_have_deleted(delete, versions)}
        except NodeUnavailable as exc:
            refused = _unreachable_before_sending(exc)
            return {"type": FAIL if refused else INFO, "error": str(exc), **_refused(exc),
                    **({} if refused else _may_have_deleted(delete, versions))}
        except ClientError as exc:
            # A 4xx refused the write; a 5xx may have come after it was stored: unknown.
            return {"type": FAIL if exc.status < 500 else INFO, "error": str(exc),
                    **(_may_have_deleted(delete, versions) if exc.status >= 500 else {})}
        completion: Op = {"type": OK, "supersedes": [version["dot"] for version in versions if "dot" in version],
                          "read_clock": union_clock(versions)}
        clock = context_clock(written.context)
        if written.dot is not None and clock is not None:
            completion["version"] = {"dot": list(written.dot), "clock": clock}
            if not blind:  # a blind write's value is its invoke's: no need to repeat it
                completion["version"]["elements"] = sorted(elements)
            if delete:
                completion["version"]["deleted"] = True
        return completion

    def close(self) -> None:
        for connection in self.connections.values():
            connection.close()


def _may_have_deleted(delete: bool, versions: list[dict[str, Any]]) -> dict[str, Any]:
    """For a DELETE whose outcome is unknown: ``read_clock``, what the tombstone it may have written
    has seen (its context's clock), so a checker knows which versions it may have superseded
    (and the nodes then reaped)."""
    return {"read_clock": union_clock(versions)} if delete else {}


def _refused(exc: Exception) -> dict[str, bool]:
    """``{"refused": True}`` when nothing reached the node (it refused the connection): the op
    certainly did nothing and may be tried on another node."""
    return {"refused": True} if isinstance(exc, NodeUnavailable) and _unreachable_before_sending(exc) else {}
