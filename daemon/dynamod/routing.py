"""Client-driven coordination (Dynamo §6.4): a client that knows the ring sends each request
straight to a replica of its key, so a PUT never pays the forward hop a node that holds none of
the key's replicas adds, and the coordinator of a GET reads one of the N copies locally.

``RingView`` is the pure part: from one node's ``/admin/ring`` and ``/admin/status`` documents,
the order in which to try the nodes for a key: its replicas that node sees up, in preference-list
order (the coordinator candidates first), then its other replicas, then every other member.
``RoutedClient`` is the shell: a ``DynamoClient`` per node, the view fetched again from a member
every ``refresh_seconds`` (Dynamo's clients poll a random node every 10 s) and as soon as a node
could not be reached. A stale view costs a forward, never correctness: any node takes any request.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import attrs

from dynamod.client import ClientError, Credentials, DynamoClient, GetResult, NodeUnavailable, WriteResult
from dynamod.core.ring import partition_of

#: Dynamo §6.4: "client polls a random Dynamo node every 10 seconds for membership updates".
REFRESH_SECONDS = 10.0


@attrs.frozen
class RingView:
    """What a client needs of the ring: each partition's preference list, where each member
    answers HTTP, and which members the node it asked sees up."""

    partitions: int
    preference_lists: tuple[tuple[str, ...], ...]
    http: dict[str, str]
    up: frozenset[str]

    @classmethod
    def from_documents(cls, ring: Any, status: Any) -> RingView:
        """The view of a node's ``/admin/ring`` and ``/admin/status``; ValueError when either is
        not what a node answers."""
        try:
            partitions = ring["partitions"]
            lists = tuple(tuple(members) for members in ring["preference_lists"])
            members = status["members"]
            http = {member["id"]: member["http"] for member in members}
            up = frozenset(member["id"] for member in members if member["status"] == "up")
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a ring and status document: {exc!r}") from None
        if not (type(partitions) is int and partitions == len(lists) > 0
                and all(isinstance(node, str) and node in http for nodes in lists for node in nodes)
                and all(isinstance(address, str) for address in http.values())):
            raise ValueError("the ring names nodes the status does not list, or its partitions do not add up")
        return cls(partitions, lists, http, up)

    def replicas(self, key: bytes) -> tuple[str, ...]:
        """The key's preference list."""
        return self.preference_lists[partition_of(key, self.partitions)]

    def candidates(self, key: bytes) -> list[str]:
        """Every member once, in the order to try them for ``key``."""
        replicas = self.replicas(key)
        order = [node for node in replicas if node in self.up]
        order += [node for node in replicas if node not in self.up]
        order += sorted(node for node in self.http if node not in replicas)
        return order


def key_bytes(key: bytes | str) -> bytes:
    """The key as the node hashes it (the UTF-8 bytes of a text key)."""
    return key.encode() if isinstance(key, str) else key


def _refused(exc: NodeUnavailable) -> bool:
    """The node refused the connection: the request was never sent (safe to send elsewhere)."""
    return isinstance(exc.__cause__, ConnectionRefusedError)


class RoutedClient:
    """``get``/``put``/``write``/``delete`` like ``DynamoClient``, each sent to a replica of its
    key. A read that finds its node unreachable goes to the next candidate; a write does only when
    the connection was refused (anything later may have been applied: ``NodeUnavailable``, outcome
    unknown). Not thread-safe, like ``DynamoClient``."""

    def __init__(self, addresses: list[str], timeout: float = 10.0, credentials: Credentials | None = None,
                 refresh_seconds: float = REFRESH_SECONDS, now: Callable[[], float] = time.monotonic):
        if not addresses:
            raise ValueError("a routed client needs at least one node address")
        self.seeds = list(addresses)
        self.timeout, self.credentials = timeout, credentials
        self.refresh_seconds, self.now = refresh_seconds, now
        self.view: RingView | None = None
        self._fetched_at = 0.0
        self._stale = True  # fetch the view before the next request
        self._clients: dict[str, DynamoClient] = {}
        #: the node each request of this client went to, counted (``node id``: requests)
        self.sent: dict[str, int] = {}

    def _client(self, address: str) -> DynamoClient:
        client = self._clients.get(address)
        if client is None:
            client = self._clients[address] = DynamoClient(address, timeout=self.timeout, credentials=self.credentials)
        return client

    def close(self) -> None:
        for client in self._clients.values():
            client.close()

    def refresh(self) -> RingView:
        """Fetch the view from the first member (or seed) that answers; NodeUnavailable when none does."""
        view = self.view
        known = [view.http[node] for node in sorted(view.http, key=lambda node: node not in view.up)] if view else []
        reasons = []
        for address in dict.fromkeys(known + self.seeds):
            client = self._client(address)
            try:
                self.view = RingView.from_documents(client.ring(), client.status())
            except (NodeUnavailable, ClientError, ValueError) as exc:
                reasons.append(f"{address}: {exc}")
                continue
            self._fetched_at, self._stale = self.now(), False
            return self.view
        raise NodeUnavailable("no node answered with its ring: " + "; ".join(reasons))

    def _view(self) -> RingView:
        if self.view is None or self._stale or self.now() - self._fetched_at >= self.refresh_seconds:
            return self.refresh()
        return self.view

    def _route(self, key: bytes | str, call: Callable[[DynamoClient], Any], retry: Callable[[NodeUnavailable], bool]):
        view = self._view()
        failure: NodeUnavailable | None = None
        for node in view.candidates(key_bytes(key)):
            try:
                answer = call(self._client(view.http[node]))
            except NodeUnavailable as exc:
                self._stale = True
                if not retry(exc):
                    raise
                failure = exc
                continue
            self.sent[node] = self.sent.get(node, 0) + 1
            return answer
        raise failure or NodeUnavailable("the ring lists no node")

    def get(self, key: bytes | str, r: int | None = None) -> GetResult:
        """Quorum read, coordinated by a replica of the key."""
        return self._route(key, lambda client: client.get(key, r), retry=lambda exc: True)

    def write(self, key: bytes | str, value: bytes, context: str | None = None, w: int | None = None) -> WriteResult:
        """Write a version through a replica of the key (no forward hop)."""
        return self._route(key, lambda client: client.write(key, value, context, w), retry=_refused)

    def put(self, key: bytes | str, value: bytes, context: str | None = None, w: int | None = None) -> str:
        """Write a version; returns its context."""
        return self.write(key, value, context, w).context

    def delete(self, key: bytes | str, context: str | None = None, w: int | None = None) -> WriteResult:
        """Write a tombstone through a replica of the key."""
        return self._route(key, lambda client: client.delete(key, context, w), retry=_refused)
