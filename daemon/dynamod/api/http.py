"""The HTTP API (CONTRACT.md): /kv/{key}, /admin/status, /admin/replica/{key}, /metrics.

A thin adapter: it parses and validates, calls the node's coordinator, and maps outcomes and
errors to status codes in one place (``ApiError``). Bodies are capped while they arrive: a value
over the limit is never buffered, it becomes a 413. The access log is off (MEASUREMENTS.md: -22%).
"""

from __future__ import annotations

import base64
import io
import json
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_to_bytes

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import resource, server

from dynamod.core.encoding import DecodeError, decode_context, encode_context
from dynamod.core.quorum import Outcome, QuorumResult
from dynamod.core.versions import context_of, live_values
from dynamod.storage.engine import CorruptRecord

if TYPE_CHECKING:
    from dynamod.node import Node

MAX_KEY_BYTES = 1024
log = Logger()


class ApiError(Exception):
    """An error answer: HTTP status plus a JSON body with at least ``error``."""

    def __init__(self, code: int, message: str, **extra: Any):
        super().__init__(message)
        self.code = code
        self.body = {"error": message, **extra}


def send_json(request: server.Request, code: int, body: Any, headers: dict[str, str] | None = None) -> None:
    """Finish ``request`` with a JSON body (unless the client went away)."""
    if getattr(request, "gone", False):
        return
    payload = json.dumps(body).encode()
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json")
    for name, value in (headers or {}).items():
        request.setHeader(name.encode(), value.encode())
    request.setHeader(b"content-length", str(len(payload)).encode())
    request.write(payload)
    request.finish()


def send_empty(request: server.Request, code: int, headers: dict[str, str]) -> None:
    """Finish ``request`` with no body."""
    if getattr(request, "gone", False):
        return
    request.setResponseCode(code)
    for name, value in headers.items():
        request.setHeader(name.encode(), value.encode())
    request.finish()


def parse_key(request: server.Request, prefix: bytes) -> bytes:
    """The key from the raw request path after ``prefix`` (percent-decoded, 1..1024 bytes of UTF-8)."""
    raw = request.path[len(prefix):]
    key = unquote_to_bytes(raw)
    if not key:
        raise ApiError(400, "key is empty")
    if len(key) > MAX_KEY_BYTES:
        raise ApiError(400, f"key is {len(key)} bytes; the limit is {MAX_KEY_BYTES}")
    try:
        key.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(400, "key is not valid UTF-8") from exc
    return key


def parse_quorum(request: server.Request, name: str, default: int, n: int) -> int:
    """``?r=K`` / ``?w=K``: an integer in 1..N."""
    values = request.args.get(name.encode())
    if not values:
        return default
    try:
        value = int(values[-1])
    except ValueError as exc:
        raise ApiError(400, f"{name} must be an integer, got {values[-1].decode(errors='replace')!r}") from exc
    if not 1 <= value <= n:
        raise ApiError(400, f"{name} must be between 1 and n={n}, got {value}")
    return value


def parse_context(request: server.Request):
    """The ``X-Context`` header as a causal context (absent: the empty context)."""
    header = request.getHeader(b"x-context")
    if header is None:
        return decode_context("")
    try:
        return decode_context(header.decode("ascii"))
    except (DecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"malformed context: {exc}") from exc


def quorum_error(result: QuorumResult) -> ApiError:
    """The CONTRACT's 503 for a quorum that was not reached."""
    return ApiError(503, f"quorum not reached: {result.reason}", needed=result.needed, acks=result.acks,
                    replicas=result.errors)


class _Handler(resource.Resource):
    """Runs a handler that may return a Deferred, mapping every failure to a JSON error."""

    isLeaf = True

    def __init__(self, node: Node):
        super().__init__()
        self.node = node

    def _run(self, request: server.Request, op: str, handler: Any) -> Any:
        started = time.perf_counter()
        request.notifyFinish().addErrback(lambda _: setattr(request, "gone", True))

        def record(_: Any) -> None:
            self.node.metrics.requests.labels(op, str(request.code)).inc()
            self.node.metrics.latency.labels(op).observe(time.perf_counter() - started)

        def fail(failure: Failure) -> None:
            if failure.check(ApiError):
                error = failure.value
            elif failure.check(CorruptRecord):
                self.node.metrics.corrupt_records.inc()
                log.error("corrupt record: {reason}", reason=failure.getErrorMessage())
                error = ApiError(500, failure.getErrorMessage())
            else:
                log.failure("{op} failed", failure, op=op)
                error = ApiError(500, f"internal error: {failure.getErrorMessage()}")
            send_json(request, error.code, error.body)

        done = defer.maybeDeferred(handler, request)
        done.addErrback(fail)
        done.addBoth(record)
        return server.NOT_DONE_YET


class KeyValueResource(_Handler):
    """``/kv/{key}``: quorum reads, writes and deletes."""

    def render_GET(self, request: server.Request) -> Any:
        return self._run(request, "get", self._get)

    def render_PUT(self, request: server.Request) -> Any:
        return self._run(request, "put", self._put)

    def render_DELETE(self, request: server.Request) -> Any:
        return self._run(request, "delete", self._delete)

    def _get(self, request: server.Request) -> defer.Deferred:
        key = parse_key(request, b"/kv/")
        settings = self.node.settings
        r = parse_quorum(request, "r", settings.r, settings.n)

        def answer(result: QuorumResult) -> None:
            if result.outcome is not Outcome.OK:
                raise quorum_error(result)
            values = live_values(result.siblings)
            body = {"context": encode_context(context_of(result.siblings)),
                    "siblings": [base64.b64encode(v).decode("ascii") for v in values]}
            send_json(request, 200 if values else 404, body)

        return self.node.coordinator.get(key, r).addCallback(answer)

    def _write(self, request: server.Request, value: bytes, deleted: bool) -> defer.Deferred:
        key = parse_key(request, b"/kv/")
        settings = self.node.settings
        w = parse_quorum(request, "w", settings.w, settings.n)
        context = parse_context(request)

        def answer(put: Any) -> None:
            if put.result.outcome is not Outcome.OK:
                raise quorum_error(put.result)
            send_empty(request, 204, {"X-Context": encode_context(put.context)})

        return self.node.coordinator.put(key, value, context, w, deleted=deleted).addCallback(answer)

    def _put(self, request: server.Request) -> defer.Deferred:
        if getattr(request, "body_too_large", False):
            raise ApiError(413, f"value exceeds the limit of {self.node.config.max_value_size} bytes",
                           limit=self.node.config.max_value_size)
        return self._write(request, request.content.read(), deleted=False)

    def _delete(self, request: server.Request) -> defer.Deferred:
        return self._write(request, b"", deleted=True)


class ReplicaResource(_Handler):
    """``/admin/replica/{key}``: this node's local copy, no quorum."""

    def render_GET(self, request: server.Request) -> Any:
        return self._run(request, "replica", self._replica)

    def _replica(self, request: server.Request) -> defer.Deferred:
        key = parse_key(request, b"/admin/replica/")

        def answer(record: Any) -> None:
            if record is None or not record.siblings:
                send_json(request, 404, {"node": self.node.node_id, "error": "no local copy", "siblings": []})
                return
            siblings = []
            for sibling in record.siblings:
                clock = sibling.clock()
                siblings.append({
                    "value": base64.b64encode(sibling.value).decode("ascii"),
                    "clock": {"vector": dict(clock.vector), "cloud": sorted(list(d) for d in clock.cloud),
                              "dot": list(sibling.dot)},
                    "deleted": sibling.deleted,
                    "timestamp": sibling.timestamp,
                })
            send_json(request, 200, {"node": self.node.node_id, "siblings": siblings})

        return self.node.store.get(key).addCallback(answer)


class StatusResource(_Handler):
    """``/admin/status``: this node's view of the cluster."""

    def render_GET(self, request: server.Request) -> Any:
        return self._run(request, "status", lambda req: send_json(req, 200, self.node.status()))


class MetricsResource(_Handler):
    """``/metrics`` in Prometheus text format."""

    def render_GET(self, request: server.Request) -> Any:
        return self._run(request, "metrics", self._metrics)

    def _metrics(self, request: server.Request) -> None:
        self.node.refresh_gauges()
        payload = generate_latest(self.node.metrics.registry)
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode())
        request.write(payload)
        request.finish()


class NotFoundResource(_Handler):
    """Anything else: a JSON 404."""

    def render(self, request: server.Request) -> Any:
        return self._run(request, "other", self._missing)

    def _missing(self, request: server.Request) -> None:
        raise ApiError(404, f"no such resource: {request.path.decode(errors='replace')}")


class RootResource(resource.Resource):
    """Routes by the first one or two path segments; the rest of the path is the key."""

    def __init__(self, node: Node):
        super().__init__()
        self.kv = KeyValueResource(node)
        self.replica = ReplicaResource(node)
        self.status = StatusResource(node)
        self.metrics = MetricsResource(node)
        self.missing = NotFoundResource(node)

    def getChildWithDefault(self, name: bytes, request: server.Request) -> resource.Resource:
        path = request.path
        if path.startswith(b"/kv/") or path == b"/kv":
            return self.kv
        if path.startswith(b"/admin/replica/") or path == b"/admin/replica":
            return self.replica
        if path == b"/admin/status":
            return self.status
        if path == b"/metrics":
            return self.metrics
        return self.missing


class LimitedRequest(server.Request):
    """A request that stops buffering its body once it exceeds the site's limit."""

    body_too_large = False
    _received = 0

    def gotLength(self, length: int | None) -> None:
        if length is not None and length > self.channel.site.max_body:
            self.body_too_large = True
            self.content = io.BytesIO()
            return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self.body_too_large:
            return
        self._received += len(data)
        if self._received > self.channel.site.max_body:
            self.body_too_large = True
            self.content = io.BytesIO()
            return
        super().handleContentChunk(data)


class ApiSite(server.Site):
    """The node's HTTP site: size-capped requests, no access log."""

    requestFactory = LimitedRequest
    noisy = False

    def __init__(self, node: Node):
        super().__init__(RootResource(node))
        self.max_body = node.config.max_value_size
        self.displayTracebacks = False

    def log(self, request: server.Request) -> None:
        """No access log on the hot path; /metrics counts requests instead."""
