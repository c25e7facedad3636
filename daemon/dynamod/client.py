"""A small synchronous Python client of the HTTP API, used by dynactl, dynacheck and the tests.

One keep-alive connection per client object (not thread-safe: give each thread its own client).
Answers map to results; errors to exceptions that carry the node's JSON reason.

Against a secured cluster (nodes with ``tls_cert``, ``tls_key``, ``tls_ca``) a client is given
``Credentials``: it speaks HTTPS, verifies the node's certificate against the cluster CA (host
names included: a node certificate lists the hosts it is reached at) and authenticates with a
client certificate of that CA, a bearer token, or both.
"""

from __future__ import annotations

import base64
import http.client
import json
import select
import ssl
from collections.abc import Callable
from typing import Any, NoReturn
from urllib.parse import quote

import attrs


class ClientError(Exception):
    """The node refused the request (4xx) or failed (5xx other than 503)."""

    def __init__(self, status: int, body: dict[str, Any]):
        super().__init__(f"HTTP {status}: {body.get('error', body)}")
        self.status = status
        self.body = body


class QuorumError(ClientError):
    """503: the quorum was not reached (for a PUT: not acknowledged, outcome unknown)."""

    @property
    def needed(self) -> int:
        return int(self.body.get("needed", 0))

    @property
    def acks(self) -> int:
        return int(self.body.get("acks", 0))


class NodeUnavailable(Exception):
    """The node could not be reached, or the connection broke before an answer (a TLS handshake
    that failed included: the message says why)."""


class CredentialsError(ValueError):
    """Credentials that cannot be used (a missing or unreadable file, a key that does not match its
    certificate); the message names the file."""


def _check_text(value: Any, name: str) -> None:
    if value is not None and (not isinstance(value, str) or not value):
        raise CredentialsError(f"the TLS credential {name!r} must be a non-empty string, not {value!r}")


@attrs.frozen
class Credentials:
    """How to reach the HTTP API of a secured cluster: the cluster CA that signed the nodes'
    certificates, and a client certificate (with its key) and/or a bearer token to authenticate.

    The ``ssl.SSLContext`` is made on first use and kept, so that every connection of a process
    shares it (its TLS session cache too) and the files are read once."""

    ca: str
    cert: str | None = None
    key: str | None = None
    token: str | None = None
    #: Holds the context once made (a list: the instance itself is frozen).
    _made_context: list[ssl.SSLContext] = attrs.field(factory=list, init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        for name in ("ca", "cert", "key", "token"):
            _check_text(getattr(self, name), name)
        if self.ca is None:
            raise CredentialsError("TLS credentials need the cluster CA (ca)")
        if (self.cert is None) != (self.key is None):
            raise CredentialsError("a client certificate needs its key and a key its certificate (cert and key)")

    @classmethod
    def from_json(cls, document: Any, source: str = "credentials") -> Credentials:
        """Credentials from ``{"ca", "cert"?, "key"?, "token"?}``; CredentialsError naming ``source``."""
        if not isinstance(document, dict):
            raise CredentialsError(f'{source}: expected an object {{"ca", "cert", "key", "token"}}, not {document!r}')
        unknown = sorted(set(document) - {"ca", "cert", "key", "token"})
        if unknown:
            raise CredentialsError(f"{source}: unknown field(s) {', '.join(unknown)} (ca, cert, key, token)")
        try:
            return cls(ca=document.get("ca"), cert=document.get("cert"), key=document.get("key"),
                       token=document.get("token"))
        except CredentialsError as exc:
            raise CredentialsError(f"{source}: {exc}") from None

    def as_json(self) -> dict[str, str]:
        """The fields that are set, as ``from_json`` reads them."""
        fields = {"ca": self.ca, "cert": self.cert, "key": self.key, "token": self.token}
        return {name: value for name, value in fields.items() if value is not None}

    def ssl_context(self) -> ssl.SSLContext:
        """The client TLS context (made once): the CA verifies the node and its host name, the
        client certificate is presented when there is one. CredentialsError when a file is unusable."""
        if not self._made_context:
            self._made_context.append(self._make_context())
        return self._made_context[0]

    def _make_context(self) -> ssl.SSLContext:
        try:
            context = ssl.create_default_context(cafile=self.ca)
        except OSError as exc:  # ssl.SSLError included: not a PEM certificate
            raise CredentialsError(f"cannot use the CA file {self.ca}: {_reason(exc)}") from None
        if self.cert is not None:
            try:
                context.load_cert_chain(self.cert, self.key)
            except OSError as exc:  # ssl.SSLError included: not PEM, or a key of another certificate
                raise CredentialsError(f"cannot use the client certificate {self.cert} with the key {self.key}: "
                                       f"{_reason(exc)}") from None
        return context

    def headers(self) -> dict[str, str]:
        """The headers every request carries: the bearer token's."""
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}


def _reason(exc: OSError) -> str:
    """An OS or TLS error's reason, without the errno or the OpenSSL source location."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return exc.reason.lower().replace("_", " ")
    return exc.strerror or str(exc) or type(exc).__name__


def describe_failure(exc: BaseException) -> str:
    """Why a request got no answer, for people: a TLS failure says what went wrong in the handshake."""
    if isinstance(exc, ssl.SSLError):
        plain = " (does the node serve plain HTTP, without TLS?)" if exc.reason == "WRONG_VERSION_NUMBER" else ""
        return f"TLS: {_reason(exc)}{plain}"
    return str(exc) or type(exc).__name__


@attrs.frozen
class GetResult:
    """A read: the live sibling values, the context to write back with, and each sibling's
    causal history (``{"dot", "vector", "cloud"}``, same order as ``siblings``)."""

    found: bool
    context: str
    siblings: list[bytes]
    versions: list[dict[str, Any]] = attrs.field(factory=list)


@attrs.frozen
class WriteResult:
    """An acknowledged write: the new version's context and its dot (None from older nodes)."""

    context: str
    dot: tuple[str, int] | None


def parse_dot(header: str | None) -> tuple[str, int] | None:
    """``ACTOR/N`` from ``X-Version``."""
    actor, _, counter = (header or "").rpartition("/")
    return (actor, int(counter)) if actor and counter.isdigit() else None


def key_path(prefix: str, key: bytes | str) -> str:
    """``/kv/<percent-encoded key>``."""
    raw = key.encode() if isinstance(key, str) else key
    return prefix + quote(raw, safe="")


#: Methods safe to send again when a kept-alive connection turns out to be closed.
IDEMPOTENT = frozenset({"GET", "HEAD"})
#: How a connection the node closed before this request shows itself (over TLS too: an end of the
#: stream without the close-notify alert reads as one, not as an error).
STALE_CONNECTION = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError, ConnectionAbortedError)


def _closed_by_peer(connection: http.client.HTTPConnection) -> bool:
    """Whether an idle kept-alive connection was closed by the node (readable with no request out:
    the end of the stream or a reset is waiting), as urllib3 checks before it reuses a connection."""
    sock = connection.sock
    if sock is None:
        return False
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


class DynamoClient:
    """Talks to one node at ``host:port``: over HTTPS with ``credentials``, else plain HTTP.
    ValueError (CredentialsError) for a bad address or unusable credentials."""

    def __init__(self, address: str, timeout: float = 10.0, credentials: Credentials | None = None):
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"expected HOST:PORT, got {address!r}")
        self.address = address
        self.credentials = credentials
        self._host, self._port, self._timeout = host, int(port), timeout
        self._tls = credentials.ssl_context() if credentials is not None else None
        self._auth_headers = credentials.headers() if credentials is not None else {}
        self._connection: http.client.HTTPConnection | None = None

    def _connect(self) -> http.client.HTTPConnection:
        if self._tls is not None:
            return http.client.HTTPSConnection(self._host, self._port, timeout=self._timeout, context=self._tls)
        return http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)

    def close(self) -> None:
        """Drop the connection."""
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def _request(self, method: str, path: str, body: bytes | None = None,
                 headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        reused = self._connection is not None
        try:
            return self._send(method, path, body, headers)
        except NodeUnavailable as exc:
            # A kept-alive connection the node closed before answering (it restarted, or closed it
            # idle) carried nothing: a read is sent again once on a fresh connection. A write is
            # not (it may have been applied), so it stays unknown to the caller.
            if reused and method in IDEMPOTENT and isinstance(exc.__cause__, STALE_CONNECTION):
                return self._send(method, path, body, headers)
            raise

    def _send(self, method: str, path: str, body: bytes | None,
              headers: dict[str, str] | None) -> tuple[int, dict[str, str], bytes]:
        if self._connection is not None and _closed_by_peer(self._connection):
            self.close()  # nothing was sent on it: a write is safe on a fresh one
        if self._connection is None:
            self._connection = self._connect()
        try:
            self._connection.request(method, path, body=body, headers={**(headers or {}), **self._auth_headers})
            response = self._connection.getresponse()
            payload = response.read()
        except (TimeoutError, OSError, http.client.HTTPException) as exc:
            self.close()
            raise NodeUnavailable(f"{self.address}: {describe_failure(exc)}") from exc
        return response.status, {k.lower(): v for k, v in response.getheaders()}, payload

    def perform(self, call: Call) -> Any:
        """Send ``call`` and return what its ``parse`` makes of the answer (raises ClientError)."""
        return call.parse(*self._request(call.method, call.path, call.body, call.headers))

    def get(self, key: bytes | str, r: int | None = None) -> GetResult:
        """Quorum read; ``found`` is False on 404."""
        return self.perform(get_call(key, r))

    def put(self, key: bytes | str, value: bytes, context: str | None = None, w: int | None = None) -> str:
        """Write a version; returns the new version's context."""
        return self.write(key, value, context, w).context

    def delete(self, key: bytes | str, context: str | None = None, w: int | None = None) -> WriteResult:
        """Write a tombstone superseding what ``context`` has seen; returns its context and dot."""
        return self.perform(write_call("DELETE", key, b"", context, w))

    def write(self, key: bytes | str, value: bytes, context: str | None = None, w: int | None = None) -> WriteResult:
        """Write a version; returns its context and dot."""
        return self.perform(write_call("PUT", key, value, context, w))

    def status(self) -> dict[str, Any]:
        """``/admin/status``."""
        return self.perform(admin_call("GET", "/admin/status"))

    def metrics(self) -> str:
        """``/metrics`` (Prometheus text)."""
        return self.perform(metrics_call())

    def ring(self) -> dict[str, Any]:
        """``/admin/ring``."""
        return self.perform(admin_call("GET", "/admin/ring"))

    def transfers(self) -> dict[str, Any]:
        """``/admin/transfers``: every member's transfer progress, and this node's outbound ones."""
        return self.perform(admin_call("GET", "/admin/transfers"))

    def join(self, seed_peer: str, replace: str | None = None, dry_run: bool = False) -> dict[str, Any]:
        """``POST /admin/join``: have this node join the cluster of the member at ``seed_peer``, as
        the replacement of the dead member ``replace`` if given; ``dry_run`` answers the plan only."""
        return self.perform(join_call(seed_peer, replace, dry_run))

    def leave(self, dry_run: bool = False) -> dict[str, Any]:
        """``POST /admin/leave``: this node hands off everything, then stops serving."""
        return self.perform(admin_call("POST", "/admin/leave", {"dry_run": True} if dry_run else {}))

    def remove_node(self, node: str, dry_run: bool = False) -> dict[str, Any]:
        """``POST /admin/remove``: the dead member ``node`` leaves the cluster without being asked;
        its partitions go to the others (refused, 409, while this node sees it up)."""
        body: dict[str, Any] = {"node": node}
        if dry_run:
            body["dry_run"] = True
        return self.perform(admin_call("POST", "/admin/remove", body))

    def replica(self, key: bytes | str) -> dict[str, Any] | None:
        """``/admin/replica/{key}``: this node's local copy, or None when it holds none."""
        return self.perform(replica_call(key))


# -- the API's calls: a request and what its answer means, apart from how it is sent -------------------
# (DynamoClient sends them over http.client; the simulator, ``dynacheck sim``, over its own network.)


@attrs.frozen
class Call:
    """One HTTP request of the API and ``parse(status, headers, payload)``, which returns what the
    answer means or raises ClientError (QuorumError for a 503)."""

    method: str
    path: str
    parse: Callable[[int, dict[str, str], bytes], Any]
    body: bytes | None = None
    headers: dict[str, str] | None = None


def json_body(status: int, payload: bytes) -> dict[str, Any]:
    """An answer's JSON document (an error's text as ``{"error"}`` when it is not JSON)."""
    try:
        return json.loads(payload) if payload else {}
    except ValueError:
        return {"error": payload.decode(errors="replace")[:200], "status": status}


def raise_for(status: int, payload: bytes) -> NoReturn:
    """The ClientError an error answer means."""
    body = json_body(status, payload)
    if status == 503:
        raise QuorumError(status, body)
    raise ClientError(status, body)


def _parse_get(status: int, headers: dict[str, str], payload: bytes) -> GetResult:
    if status not in (200, 404):
        raise_for(status, payload)
    body = json_body(status, payload)
    if "siblings" not in body:
        raise_for(status, payload)
    return GetResult(found=status == 200, context=body.get("context", ""),
                     siblings=[base64.b64decode(v) for v in body["siblings"]],
                     versions=list(body.get("versions", [])))


def _parse_write(status: int, headers: dict[str, str], payload: bytes) -> WriteResult:
    if status != 204:
        raise_for(status, payload)
    return WriteResult(headers.get("x-context", ""), parse_dot(headers.get("x-version")))


def _parse_admin(status: int, headers: dict[str, str], payload: bytes) -> dict[str, Any]:
    if not 200 <= status < 300:
        raise_for(status, payload)
    return json_body(status, payload)


def _parse_metrics(status: int, headers: dict[str, str], payload: bytes) -> str:
    if status != 200:
        raise_for(status, payload)
    return payload.decode()


def _parse_replica(status: int, headers: dict[str, str], payload: bytes) -> dict[str, Any] | None:
    if status == 404:
        return None
    if status != 200:
        raise_for(status, payload)
    return json_body(status, payload)


def get_call(key: bytes | str, r: int | None = None) -> Call:
    """``GET /kv/{key}``: a quorum read (a GetResult; ``found`` is False on 404)."""
    path = key_path("/kv/", key) + (f"?r={r}" if r is not None else "")
    return Call("GET", path, _parse_get, headers={"Accept": "application/json"})


def write_call(method: str, key: bytes | str, value: bytes, context: str | None, w: int | None) -> Call:
    """``PUT`` (a version) or ``DELETE`` (a tombstone) of ``/kv/{key}``: a WriteResult."""
    path = key_path("/kv/", key) + (f"?w={w}" if w is not None else "")
    headers = {"Content-Type": "application/octet-stream"}
    if context:
        headers["X-Context"] = context
    return Call(method, path, _parse_write, body=value, headers=headers)


def admin_call(method: str, path: str, body: dict[str, Any] | None = None) -> Call:
    """An ``/admin`` request with a JSON answer (and a JSON body when given)."""
    return Call(method, path, _parse_admin, body=json.dumps(body).encode() if body is not None else None,
                headers={"Content-Type": "application/json"} if body is not None else None)


def join_call(seed_peer: str, replace: str | None = None, dry_run: bool = False) -> Call:
    """``POST /admin/join``."""
    body: dict[str, Any] = {"seed": seed_peer}
    if replace is not None:
        body["replace"] = replace
    if dry_run:
        body["dry_run"] = True
    return admin_call("POST", "/admin/join", body)


def metrics_call() -> Call:
    """``GET /metrics`` (Prometheus text)."""
    return Call("GET", "/metrics", _parse_metrics)


def replica_call(key: bytes | str) -> Call:
    """``GET /admin/replica/{key}``: the node's local copy, or None when it holds none."""
    return Call("GET", key_path("/admin/replica/", key), _parse_replica)
