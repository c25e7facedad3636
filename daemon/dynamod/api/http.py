"""The HTTP API (CONTRACT.md): /kv/{key}, /admin/status, /admin/replica/{key}, /metrics.

A thin adapter between ``dynamod.api.server`` (HTTP parsing) and the node: it validates, calls the
coordinator, and maps outcomes and errors to status codes in one place (``ApiError``). Every
request is counted and timed in the node's Prometheus metrics; there is no access log
(MEASUREMENTS.md: -22%).
"""

from __future__ import annotations

import base64
import json
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_to_bytes

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from dynamod.api.metrics import RequestStages
from dynamod.api.server import HttpFactory, HttpLimits, HttpRequest, HttpResponse
from dynamod.core.addresses import split_host_port
from dynamod.core.encoding import DecodeError, decode_context, encode_context
from dynamod.core.keys import key_problem
from dynamod.core.quorum import Outcome, QuorumResult
from dynamod.core.sizes import KeyTooLarge
from dynamod.core.versions import CausalContext, Record, Sibling, context_of
from dynamod.gossip import MembershipError
from dynamod.storage.engine import CorruptRecord

if TYPE_CHECKING:
    from dynamod.node import Node

log = Logger()


class ApiError(Exception):
    """An error answer: HTTP status plus a JSON body with at least ``error``."""

    def __init__(self, code: int, message: str, **extra: Any):
        super().__init__(message)
        self.code = code
        self.body = {"error": message, **extra}

    def response(self) -> HttpResponse:
        return HttpResponse.json(self.code, self.body)


def parse_key(request: HttpRequest, prefix: bytes) -> bytes:
    """The key from the raw path after ``prefix`` (percent-decoded, 1..1024 bytes of UTF-8)."""
    key = unquote_to_bytes(request.path[len(prefix):])
    problem = key_problem(key)
    if problem is not None:
        raise ApiError(400, problem)
    return key


def parse_quorum(request: HttpRequest, name: str, default: int, n: int) -> int:
    """``?r=K`` / ``?w=K``: an integer in 1..N."""
    if not request.query:
        return default
    values = request.arguments().get(name)
    if not values:
        return default
    text = values[-1]
    # ASCII digits only: int() also takes '２' (fullwidth), '٢' and '_' separators.
    if not (0 < len(text) <= 9 and text.isascii() and text.isdigit()):
        raise ApiError(400, f"{name} must be an integer, got {text!r}")
    value = int(text)
    if not 1 <= value <= n:
        raise ApiError(400, f"{name} must be between 1 and n={n}, got {value}")
    return value


def parse_context(request: HttpRequest) -> CausalContext:
    """The ``X-Context`` header as a causal context (absent: the empty context)."""
    header = request.headers.get(b"x-context")
    if header is None:
        return CausalContext()
    try:
        return decode_context(header.decode("ascii"))
    except (DecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"malformed context: {exc}") from exc


def quorum_error(result: QuorumResult) -> ApiError:
    """The CONTRACT's 503 for a quorum that was not reached."""
    return ApiError(503, f"quorum not reached: {result.reason}", needed=result.needed, acks=result.acks,
                    replicas=result.errors)


def replica_document(node_id: str, record: Record | None) -> HttpResponse:
    """``/admin/replica`` answer for a local record."""
    if record is None or not record.siblings:
        return HttpResponse.json(404, {"node": node_id, "error": "no local copy", "siblings": []})
    siblings = [{"value": base64.b64encode(sibling.value).decode("ascii"), "clock": clock_document(sibling),
                 "deleted": sibling.deleted, "timestamp": sibling.timestamp} for sibling in record.siblings]
    return HttpResponse.json(200, {"node": node_id, "siblings": siblings})


def clock_document(sibling: Sibling) -> dict[str, Any]:
    """A version's clock as JSON: every dot it has seen (its own included) and its own dot."""
    clock = sibling.clock()
    return {"vector": dict(clock.vector), "cloud": sorted(list(d) for d in clock.cloud), "dot": list(sibling.dot)}


def dot_header(dot: tuple[str, int]) -> str:
    """``X-Version`` of a new version: ``ACTOR/COUNTER`` (actors never end in ``/<digits>``)."""
    return f"{dot[0]}/{dot[1]}"


#: An admin body is a handful of short fields; anything longer is refused before parsing.
MAX_ADMIN_BODY = 64 * 1024


def admin_body(request: HttpRequest, allowed: set[str], usage: str) -> dict[str, Any]:
    """An admin POST's JSON object (empty body: ``{}``); anything else, or an unknown field, is a 400."""
    if request.body_too_large or len(request.body) > MAX_ADMIN_BODY:
        raise ApiError(413, f"{usage}: the body exceeds {MAX_ADMIN_BODY} bytes", limit=MAX_ADMIN_BODY)
    try:
        body = json.loads(request.body or b"{}")
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # RecursionError: nesting too deep
        raise ApiError(400, f"{usage}: the body is not JSON") from exc
    if not isinstance(body, dict):
        raise ApiError(400, f"{usage}: the body is not a JSON object")
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise ApiError(400, f"{usage}: unknown field {unknown[0]!r}")
    return body


def member_id_ok(node: str) -> bool:
    """A plausible member id: 1..255 printable characters (ids are never longer)."""
    return 0 < len(node) <= 255 and node.isprintable()


def dry_run_flag(body: dict[str, Any], usage: str) -> bool:
    """``dry_run`` of an admin body: a boolean, false when absent."""
    dry_run = body.get("dry_run", False)
    if not isinstance(dry_run, bool):
        raise ApiError(400, f"{usage}: dry_run must be true or false")
    return dry_run


#: Client operations whose latency paces background work (admission control).
FOREGROUND = frozenset({"get", "put", "delete"})


class Api:
    """Routes requests to handlers and keeps the per-operation metrics."""

    def __init__(self, node: Node):
        self.node = node
        self._counters: dict[tuple[str, int], Any] = {}
        self._histograms: dict[str, Any] = {}
        self._in_flight: set[defer.Deferred] = set()

    def factory(self) -> HttpFactory:
        """The Twisted factory serving this API."""
        config = self.node.config
        limits = HttpLimits(max_body=config.max_value_size, header_timeout=config.http_header_timeout,
                            idle_timeout=config.http_idle_timeout, max_connections=config.http_max_connections,
                            max_pipelined=config.http_max_pipelined)
        metrics = self.node.metrics
        self.http_factory = HttpFactory(self.handle, limits, self.node.reactor, self.node.writer,
                                        observe=lambda reason: metrics.http_closed.labels(reason).inc())
        metrics.http_connections.set_function(lambda: self.http_factory.open_connections)
        return self.http_factory

    def _route(self, request: HttpRequest) -> tuple[str, Any]:
        path = request.path
        method = "GET" if request.method == "HEAD" else request.method  # the server drops HEAD's body
        if path.startswith(b"/kv/") or path == b"/kv":
            handlers = {"GET": ("get", self.get), "PUT": ("put", self.put), "DELETE": ("delete", self.delete)}
            return handlers.get(method, ("kv", self._method_not_allowed))
        admin_posts = {b"/admin/join": ("join", self.join), b"/admin/leave": ("leave", self.leave),
                       b"/admin/remove": ("remove", self.remove)}
        if path in admin_posts:
            return admin_posts[path] if method == "POST" else ("other", self._method_not_allowed)
        if method != "GET":
            return "other", self._method_not_allowed
        if path.startswith(b"/admin/replica/") or path == b"/admin/replica":
            return "replica", self.replica
        if path == b"/admin/status":
            return "status", lambda _: HttpResponse.json(200, self.node.status())
        if path == b"/admin/transfers":
            return "transfers", lambda _: HttpResponse.json(200, self.node.transfers_document())
        if path == b"/admin/ring":
            return "ring", lambda _: HttpResponse.json(200, self.node.ring_document())
        if path == b"/metrics":
            return "metrics", self.metrics
        return "other", self._not_found

    def handle(self, request: HttpRequest) -> HttpResponse | defer.Deferred:
        """Answer one request (the ``HttpProtocol`` handler)."""
        op, handler = self._route(request)
        started = self.node.reactor.seconds()
        auth = self.node.auth
        if auth is not None:
            refusal = auth.refusal(op, request.client, request.headers.get(b"authorization"))
            if refusal is not None:
                challenge = (("WWW-Authenticate", 'Bearer realm="dynamod"'),) if refusal.status == 401 else ()
                return self._observe(HttpResponse.json(refusal.status, {"error": refusal.reason}, challenge),
                                     op, started)
        try:
            if op in FOREGROUND:
                stages = self.node.metrics.stages.start(op, request.received)
                request.on_written = stages.written
                result = handler(request, stages)
            else:
                result = handler(request)
        except Exception:  # noqa: BLE001 - mapped to a JSON error below
            result = self._error(Failure())
        if isinstance(result, defer.Deferred):
            answered = result.addErrback(self._error).addCallback(self._observe, op, started)
            if not answered.called:
                self._in_flight.add(answered)
                answered.addBoth(self._finished, answered)
            return answered
        return self._observe(result, op, started)

    def _finished(self, response: Any, answered: defer.Deferred) -> Any:
        self._in_flight.discard(answered)
        return response

    def drained(self, clock: Any, timeout: float) -> defer.Deferred:
        """Take no more requests; fires once every request being answered has its answer, or
        after ``timeout`` seconds (a stopping node lets in-flight writes finish with its peers
        still connected)."""
        self.http_factory.close_connections()
        pending = [defer.Deferred() for _ in self._in_flight]
        for waiter, answered in zip(pending, list(self._in_flight), strict=True):
            answered.addBoth(lambda response, w=waiter: (w.callback(None), response)[1])
        return defer.DeferredList(pending).addTimeout(timeout, clock).addErrback(lambda _: None)

    def _observe(self, response: HttpResponse, op: str, started: float) -> HttpResponse:
        counter = self._counters.get((op, response.status))
        if counter is None:
            counter = self._counters[(op, response.status)] = \
                self.node.metrics.requests.labels(op, str(response.status))
        counter.inc()
        histogram = self._histograms.get(op)
        if histogram is None:
            histogram = self._histograms[op] = self.node.metrics.latency.labels(op)
        elapsed = self.node.reactor.seconds() - started
        histogram.observe(elapsed)
        if op in FOREGROUND:
            self.node.admission.observe_latency(elapsed)
        return response

    def _error(self, failure: Failure) -> HttpResponse:
        if failure.check(ApiError):
            return failure.value.response()
        if failure.check(MembershipError):
            return ApiError(failure.value.status, str(failure.value)).response()
        if failure.check(KeyTooLarge):
            value = failure.value
            return ApiError(413, str(value), limit=value.limit, size=value.size).response()
        if failure.check(CorruptRecord):  # counted and logged once per key by the store
            return ApiError(500, failure.getErrorMessage()).response()
        log.failure("request failed", failure)
        return ApiError(500, f"internal error: {failure.getErrorMessage()}").response()

    # -- /kv -----------------------------------------------------------------------------------

    def get(self, request: HttpRequest, stages: RequestStages | None = None) -> defer.Deferred:
        key = parse_key(request, b"/kv/")
        settings = self.node.settings
        r = parse_quorum(request, "r", settings.r, settings.n)

        def answer(result: QuorumResult) -> HttpResponse:
            if result.outcome is not Outcome.OK:
                raise quorum_error(result)
            live = [sibling for sibling in result.siblings if not sibling.deleted]
            body = {"context": encode_context(context_of(result.siblings)),
                    "siblings": [base64.b64encode(sibling.value).decode("ascii") for sibling in live],
                    "versions": [clock_document(sibling) for sibling in live]}
            return HttpResponse.json(200 if live else 404, body)

        return self.node.coordinator.get(key, r, stages).addCallback(answer)

    def _write(self, request: HttpRequest, value: bytes, deleted: bool,
               stages: RequestStages | None) -> defer.Deferred:
        key = parse_key(request, b"/kv/")
        settings = self.node.settings
        w = parse_quorum(request, "w", settings.w, settings.n)
        context = parse_context(request)

        def answer(put: Any) -> HttpResponse:
            if put.result.outcome is not Outcome.OK:
                raise quorum_error(put.result)
            headers = [("X-Context", encode_context(put.context))]
            if put.dot is not None:
                headers.append(("X-Version", dot_header(put.dot)))
            return HttpResponse(204, headers=tuple(headers))

        return self.node.coordinator.put(key, value, context, w, deleted=deleted, stages=stages).addCallback(answer)

    def put(self, request: HttpRequest, stages: RequestStages | None = None) -> defer.Deferred:
        if request.body_too_large:
            limit = self.node.config.max_value_size
            raise ApiError(413, f"value exceeds the limit of {limit} bytes", limit=limit)
        return self._write(request, request.body, deleted=False, stages=stages)

    def delete(self, request: HttpRequest, stages: RequestStages | None = None) -> defer.Deferred:
        return self._write(request, b"", deleted=True, stages=stages)

    # -- admin ---------------------------------------------------------------------------------

    def replica(self, request: HttpRequest) -> defer.Deferred:
        key = parse_key(request, b"/admin/replica/")
        return self.node.store.get(key).addCallback(lambda record: replica_document(self.node.node_id, record))

    def join(self, request: HttpRequest) -> defer.Deferred:
        usage = ('expected a JSON body {"seed": "HOST:PORT", "replace": "DEAD"?, "dry_run": bool?} naming a '
                 "member's peer address")
        body = admin_body(request, {"seed", "replace", "dry_run"}, usage)
        seed = body.get("seed")
        if not isinstance(seed, str):
            raise ApiError(400, usage)
        try:
            split_host_port(seed)
        except ValueError as exc:
            raise ApiError(400, f"{usage}: {exc}") from exc
        replace = body.get("replace")
        if replace is not None and not (isinstance(replace, str) and member_id_ok(replace)):
            raise ApiError(400, usage)
        dry_run = dry_run_flag(body, usage)
        return self.node.join(seed, replace=replace, dry_run=dry_run).addCallback(
            lambda answer: HttpResponse.json(200, answer))

    def leave(self, request: HttpRequest) -> HttpResponse:
        usage = 'expected no body or a JSON body {"dry_run": bool}'
        dry_run = dry_run_flag(admin_body(request, {"dry_run"}, usage), usage)
        return HttpResponse.json(200 if dry_run else 202, self.node.leave(dry_run=dry_run))

    def remove(self, request: HttpRequest) -> defer.Deferred:
        usage = 'expected a JSON body {"node": "DEAD", "dry_run": bool?} naming a member that is down'
        body = admin_body(request, {"node", "dry_run"}, usage)
        node = body.get("node")
        if not (isinstance(node, str) and member_id_ok(node)):
            raise ApiError(400, usage)
        dry_run = dry_run_flag(body, usage)
        return self.node.remove(node, dry_run=dry_run).addCallback(lambda answer: HttpResponse.json(200, answer))

    def metrics(self, request: HttpRequest) -> HttpResponse:
        self.node.refresh_gauges()
        return HttpResponse(200, generate_latest(self.node.metrics.registry), CONTENT_TYPE_LATEST)

    def _not_found(self, request: HttpRequest) -> HttpResponse:
        raise ApiError(404, f"no such resource: {request.path.decode(errors='replace')}")

    def _method_not_allowed(self, request: HttpRequest) -> HttpResponse:
        raise ApiError(405, f"method {request.method} is not allowed on {request.path.decode(errors='replace')}")
