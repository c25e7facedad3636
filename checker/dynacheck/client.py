"""Workload ops against the HTTP API, turned into history completions (Jepsen's client).

``add`` (cart) is a read-modify-write: GET, union the siblings' items, add one, PUT with the
context. ``write`` (register) is a blind PUT. ``read`` is a GET. What the outcome means:

* a GET that fails means nothing happened: ``fail``;
* a PUT answered 503, timed out or cut off mid-way *may* have been stored: ``info``, never ``fail``;
* a PUT refused before it was sent (connection refused) or with a 4xx certainly was not: ``fail``;
  any other error status (a 500) may come after the write was stored: ``info``.
"""

from __future__ import annotations

from typing import Any

from dynacheck.history import FAIL, INFO, OK, Op
from dynamod.client import ClientError, DynamoClient, GetResult, NodeUnavailable, QuorumError
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


def _unreachable_before_sending(exc: NodeUnavailable) -> bool:
    return isinstance(exc.__cause__, ConnectionRefusedError)


class Client:
    """Executes ops for one worker thread; talks to ``op["node"]`` or the thread's own node."""

    def __init__(self, addresses: dict[str, str], default_node: str, timeout: float = DEFAULT_TIMEOUT_SECONDS):
        self.addresses, self.default_node, self.timeout = addresses, default_node, timeout
        self.connections: dict[str, DynamoClient] = {}

    def _client(self, node: str) -> DynamoClient:
        if node not in self.connections:
            self.connections[node] = DynamoClient(self.addresses[node], timeout=self.timeout)
        return self.connections[node]

    def node_for(self, op: Op) -> str:
        return op.get("node") or self.default_node

    def __call__(self, op: Op) -> Op:
        client = self._client(self.node_for(op))
        if op["f"] == "read":
            return self.read(client, op)
        if op["f"] == "add":
            return self.add(client, op)
        if op["f"] == "write":
            return self.write(client, op, context=None, supersedes=[], elements=[op["value"]])
        return {"type": FAIL, "error": f"unknown op {op['f']!r}"}

    def read(self, client: DynamoClient, op: Op) -> Op:
        try:
            result = client.get(op["key"])
        except (ClientError, NodeUnavailable) as exc:
            return {"type": FAIL, "error": str(exc)}
        versions = versions_of(result)
        elements = sorted({element for version in versions for element in version["elements"]})
        return {"type": OK, "value": elements, "versions": versions}

    def add(self, client: DynamoClient, op: Op) -> Op:
        try:
            read = client.get(op["key"])
        except (ClientError, NodeUnavailable) as exc:
            return {"type": FAIL, "error": f"read before the add: {exc}"}
        versions = versions_of(read)
        items = {element for version in versions for element in version["elements"]} | {op["value"]}
        return self.write(client, op, context=read.context or None,
                          supersedes=[version["dot"] for version in versions], elements=items)

    def write(self, client: DynamoClient, op: Op, context: str | None, supersedes: list[Any],
              elements: Any) -> Op:
        try:
            written = client.write(op["key"], encode_elements(elements), context=context)
        except QuorumError as exc:
            return {"type": INFO, "error": str(exc)}
        except NodeUnavailable as exc:
            return {"type": FAIL if _unreachable_before_sending(exc) else INFO, "error": str(exc)}
        except ClientError as exc:
            # A 4xx refused the write; a 5xx may have come after it was stored: unknown.
            return {"type": FAIL if exc.status < 500 else INFO, "error": str(exc)}
        completion: Op = {"type": OK, "supersedes": supersedes}
        clock = context_clock(written.context)
        if written.dot is not None and clock is not None:
            completion["version"] = {"dot": list(written.dot), "clock": clock}
        return completion

    def close(self) -> None:
        for connection in self.connections.values():
            connection.close()
