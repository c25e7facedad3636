"""Hostile input for dynamod: malformed HTTP requests and peer frames, generated from a seed (issue 14).

Pure: every generator takes a ``random.Random`` and a ``Target`` (the names a case may use) and
returns cases; nothing here opens a socket or reads a clock, so one seed always gives the same cases.
Each case carries a short ``label`` (``family/variant``) and what a correct node must do with it:

* ``HttpCase.answers``: the complete, valid requests at the start of the bytes, in order; each must
  be answered before the node closes, with one of its ``statuses`` when the right one is
  unambiguous (``None``: any status below 500). Whatever follows them may be answered or refused.
* ``PeerCase.requests``: the ids of well-framed requests; each is answered or the connection closes,
  and when ``well_framed`` (no frame that does not decode) the connection may not close at all.
  ``refused`` ids must be answered with an error, never a value (a typed refusal).

Never generated, because they would legitimately change the cluster (authentication is a later
issue): a valid peer ``join`` / ``gossip`` / ``goodbye``, a valid ``/admin/leave`` that is not a dry
run, a removal naming a member, or any write outside keys starting with ``Target.fuzz_prefix``.
Cases that mangle framing start only from requests whose every prefix is harmless (``_mutable``).
"""

from __future__ import annotations

import base64
import json
import random
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import msgpack

# -- targets and cases ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """What the cases may name: the cluster's members and settings, keys that may only be read."""

    members: tuple[str, ...]
    peers: tuple[str, ...]
    read_keys: tuple[str, ...] = ()
    partitions: int = 16
    n: int = 3
    max_value_size: int = 1024 * 1024
    fuzz_prefix: str = "fz"


@dataclass(frozen=True)
class Answer:
    """One complete request whose answer must arrive."""

    method: str
    statuses: frozenset[int] | None = None


@dataclass(frozen=True)
class HttpCase:
    label: str
    data: bytes
    answers: tuple[Answer, ...] = ()
    #: Bytes follow the requests that must be answered (the node may answer or refuse them too).
    trailing: bool = False
    #: Shut the sending side down after the bytes (the node still owes the answers).
    half_close: bool = False


@dataclass(frozen=True)
class PeerCase:
    label: str
    data: bytes
    frames: int
    requests: tuple[int, ...] = ()
    refused: tuple[int, ...] = ()
    well_framed: bool = True


ANY: frozenset[int] | None = None
BAD_REQUEST = frozenset({400})


# -- HTTP requests -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """A request before encoding; ``statuses`` is what a correct node answers it with."""

    method: str
    target: bytes
    headers: tuple[tuple[bytes, bytes], ...] = ()
    body: bytes | None = None
    statuses: frozenset[int] | None = ANY
    #: False for requests a framing mutation must not start from (a truncated body could turn
    #: them into a request with an effect, e.g. a leave).
    mutable: bool = True

    def head(self, version: bytes = b"HTTP/1.1") -> bytes:
        lines = [self.method.encode("latin-1") + b" " + self.target + b" " + version, b"Host: fuzz"]
        lines += [name + b": " + value for name, value in self.headers]
        if self.body is not None:
            lines.append(b"Content-Length: " + str(len(self.body)).encode())
        return b"\r\n".join(lines) + b"\r\n\r\n"

    def encode(self) -> bytes:
        return self.head() + (self.body or b"")

    def answer(self) -> Answer:
        return Answer(self.method, self.statuses)


def fuzz_key(rng: random.Random, target: Target) -> str:
    return f"{target.fuzz_prefix}-{rng.getrandbits(40):010x}"


def _kv(key: str) -> bytes:
    return b"/kv/" + quote(key, safe="").encode("ascii")


def _value(rng: random.Random, size: int | None = None) -> bytes:
    size = rng.choice([0, 1, 17, 300, 4096]) if size is None else size
    return rng.randbytes(size)


def _json(document: Any) -> bytes:
    return json.dumps(document).encode()


def _read_key(rng: random.Random, target: Target) -> str:
    if target.read_keys and rng.random() < 0.5:
        return rng.choice(target.read_keys)
    return fuzz_key(rng, target)


def valid_request(rng: random.Random, target: Target) -> Request:
    """A valid request with no lasting effect outside fuzz keys."""
    choice = rng.randrange(9)
    if choice == 0:
        query = f"?r={rng.randint(1, target.n)}".encode() if rng.random() < 0.5 else b""
        return Request("GET", _kv(_read_key(rng, target)) + query, statuses=frozenset({200, 404}))
    if choice in (1, 2):
        query = f"?w={rng.randint(1, target.n)}".encode() if rng.random() < 0.5 else b""
        return Request("PUT", _kv(fuzz_key(rng, target)) + query, body=_value(rng), statuses=frozenset({204}))
    if choice == 3:
        return Request("DELETE", _kv(fuzz_key(rng, target)), statuses=frozenset({204}))
    if choice == 4:
        path = rng.choice([b"/admin/status", b"/admin/ring", b"/admin/transfers", b"/metrics"])
        return Request("GET", path, statuses=frozenset({200}))
    if choice == 5:
        return Request("GET", b"/admin/replica/" + quote(_read_key(rng, target), safe="").encode(),
                       statuses=frozenset({200, 404}))
    if choice == 6:  # every member is already in a cluster: always refused
        body = {"seed": rng.choice(target.peers)}
        if rng.random() < 0.3:
            body["dry_run"] = True
        return Request("POST", b"/admin/join", body=_json(body), statuses=frozenset({409}))
    if choice == 7:  # no such member: always refused
        return Request("POST", b"/admin/remove", body=_json({"node": f"{target.fuzz_prefix}-ghost", "dry_run": True}),
                       statuses=ANY)
    return Request("GET", b"/admin/status", statuses=frozenset({200}))


def _leave_dry_run() -> Request:
    return Request("POST", b"/admin/leave", body=_json({"dry_run": True}), statuses=frozenset({200}), mutable=False)


def _mutable(rng: random.Random, target: Target) -> Request:
    request = valid_request(rng, target)
    assert request.mutable
    return request


def _with_prefix(rng: random.Random, target: Target) -> list[Request]:
    """Valid requests (often none) sent before a case's own bytes; their answers are owed."""
    return [valid_request(rng, target) for _ in range(rng.choice([0, 0, 0, 1, 1, 2]))]


def _case(label: str, prefix: list[Request], data: bytes, owed: tuple[Request, ...] | list[Request] = (),
          half_close: bool = False) -> HttpCase:
    """``prefix`` and ``owed`` are answered, in order; ``data`` holds ``owed``, maybe followed by more."""
    answers = tuple(r.answer() for r in [*prefix, *owed])
    trailing = data != b"".join(r.encode() for r in owed)
    return HttpCase(label, b"".join(r.encode() for r in prefix) + data, answers, trailing, half_close)


# Families: each ``(rng, target, prefix) -> HttpCase``.

def http_valid_pipeline(rng: random.Random, target: Target, prefix: list[Request]) -> HttpCase:
    requests = [valid_request(rng, target) for _ in range(rng.randint(1, 4))]
    if rng.random() < 0.1:
        requests.append(_leave_dry_run())
    return _case("valid/pipeline", prefix, b"".join(r.encode() for r in requests), requests)


BAD_METHODS = [b"GETT", b"get", b"G\x00T", b"PUT\x00", b"BREW", b"CONNECT", b"PRI", b"M-SEARCH", b"\xff\xfe",
               b"", b"A" * 100, b"PATCH", b"TRACE", b"PROPFIND", b"MKCOL", b"PURGE", b"GET GET", b"\tGET"]


def http_bad_method(rng: random.Random, target: Target, prefix: list[Request]) -> HttpCase:
    base = _mutable(rng, target)
    method = rng.choice(BAD_METHODS)
    data = base.encode()
    data = method + data[len(base.method):]
    return _case("method/bad", prefix, data)


BAD_VERSIONS = [b"HTTP/1.2", b"HTTP/2.0", b"HTTP/0.9", b"HTTP/1", b"HTTP/11.1", b"HTTX/1.1", b"", b"HTTP/1.1 x",
                b"http/1.1", b"HTTP/1.1\x00", b"HTTP/9.9", b"HTTP/1.01", b"HTTP/\xff.1", b"HTTP/1.1" * 50]


def http_bad_version(rng: random.Random, target: Target, prefix: list[Request]) -> HttpCase:
    base = _mutable(rng, target)
    return _case("version/bad", prefix, base.head(rng.choice(BAD_VERSIONS)) + (base.body or b""))


def _insert_header_lines(request: Request, lines: list[bytes]) -> bytes:
    head = request.head()
    first, rest = head.split(b"\r\n", 1)
    return first + b"\r\n" + b"".join(line + b"\r\n" for line in lines) + rest + (request.body or b"")


def http_bad_headers(rng: random.Random, target: Target, prefix: list[Request]) -> HttpCase:
    base = _mutable(rng, target)
    variant, lines = rng.choice([
        ("huge-value", [b"X-Fuzz: " + b"a" * 70_000]),
        ("huge-name", [b"X" * 70_000 + b": v"]),
        ("many", [b"X-F-%d: v" % i for i in range(3000)]),
        ("many-huge-total", [b"X-F-%d: " % i + b"b" * 1000 for i in range(80)]),
        ("no-colon", [b"NoColonHere"]),
        ("space-in-name", [b"Bad Header: x"]),
        ("space-before-colon", [b"X-Fuzz : x"]),
        ("control-chars", [b"X-Fuzz: a\x01\x02\x7fb"]),
        ("obs-fold", [b"X-Fuzz: a", b"  folded"]),
        ("leading-fold", [b" X-Fuzz: a"]),
        ("non-utf8", [b"X-Fuzz: \xff\xfe\xc0\xaf"]),
        ("nul-value", [b"X-Fuzz: a\x00b"]),
        ("bare-cr", [b"X-Fuzz: a\rb"]),
        ("bare-lf", [b"X-Fuzz: a\nX-Other: b"]),
        ("empty-name", [b": x"]),
        ("host-twice", [b"Host: a", b"Host: b"]),
        ("connection-conflict", [b"Connection: close", b"Connection: keep-alive"]),
        ("upgrade", [b"Connection: Upgrade", b"Upgrade: websocket"]),
        ("h2c", [b"Connection: Upgrade, HTTP2-Settings", b"Upgrade: h2c", b"HTTP2-Settings: AAMAAABkAAQAAP__"]),
    ])
    return _case(f"headers/{variant}", prefix, _insert_header_lines(base, lines))


def _put(rng: random.Random, target: Target, size: int | None = None) -> Request:
    return Request("PUT", _kv(fuzz_key(rng, target)), body=_value(rng, size), statuses=frozenset({204}))


def http_bad_content_length(rng: random.Random, target: Target, prefix: list[Request]) -> HttpCase:
    put = _put(rng, target, rng.choice([1, 5, 64]))
    n = len(put.body)
    variant, values = rng.choice([
        ("duplicate-equal", [b"%d" % n, b"%d" % n]),
        ("conflicting", [b"%d" % n, b"%d" % (n + 3)]),
        ("conflicting-smaller-first", [b"0", b"%d" % n]),
        ("list", [b"%d, %d" % (n, n)]),
        ("plus-sign", [b"+%d" % n]),
        ("negative", [b"-1"]),
        ("hex", [b"0x%x" % n]),
        ("huge", [b"99999999999999999999999"]),
        ("u64-overflow", [b"18446744073709551616"]),
        ("letters", [b"%da" % n]),
        ("empty", [b""]),
        ("non-ascii-digits", ["\uff15".encode()]),
        ("space-inside", [b"%d %d" % (n, n)]),
    ])
    head = Request(put.method, put.target).head()
    lines = [b"Content-Length: " + value for value in values]
    first, rest = head.split(b"\r\n", 1)
    data = first + b"\r\n" + b"".join(line + b"\r\n" for line in lines) + rest + put.body
    return _case(f"content-length/{variant}", prefix, data)


def _chunked(put: Request, chunks: bytes, te: bytes = b"chunked", extra: list[bytes] = ()) -> bytes:
    head = Request(put.method, put.target, headers=((b"Transfer-Encoding", te), *((h, v) for h, v in extra))).head()
    return head + chunks


def http_bad_chunked(rng: random.Random, target: Target, prefix: list[Request]) -> HttpCase:
    put = _put(rng, target, 0)
    data = rng.randbytes(8)
    good = b"8\r\n" + data + b"\r\n0\r\n\r\n"
    variant, body, te, extra = rng.choice([
        ("size-not-hex", b"zz\r\n" + data + b"\r\n0\r\n\r\n", b"chunked", []),
        ("size-negative", b"-1\r\n" + data + b"\r\n0\r\n\r\n", b"chunked", []),
        ("size-overflow", b"ffffffffffffffffffff\r\n" + data + b"\r\n0\r\n\r\n", b"chunked", []),
        ("size-2**64-1", b"ffffffffffffffff\r\n" + data + b"\r\n0\r\n\r\n", b"chunked", []),
        ("size-too-big", b"ff\r\n" + data + b"\r\n0\r\n\r\n", b"chunked", []),
        ("size-too-small", b"2\r\n" + data + b"\r\n0\r\n\r\n", b"chunked", []),
        ("size-space", b"8 \r\n" + data + b"\r\n0\r\n\r\n", b"chunked", []),
        ("ext-garbage", b"8;\x00\xff\r\n" + data + b"\r\n0\r\n\r\n", b"chunked", []),
        ("no-crlf-after-data", b"8\r\n" + data + b"0\r\n\r\n", b"chunked", []),
        ("no-last-chunk", b"8\r\n" + data + b"\r\n", b"chunked", []),
        ("trailer-garbage", b"8\r\n" + data + b"\r\n0\r\nBad Trailer\r\n\r\n", b"chunked", []),
        ("te-and-cl", good, b"chunked", [(b"Content-Length", b"3")]),
        ("te-twice", good, b"chunked, chunked", []),
        ("te-gzip-chunked", good, b"gzip, chunked", []),
        ("te-chunked-identity", good, b"chunked, identity", []),
        ("te-xchunked", good, b"xchunked", []),
        ("te-identity", good, b"identity", []),
        ("te-space", good, b" chunked ", []),
        ("te-nul", good, b"chunked\x00", []),
    ])
    return _case(f"chunked/{variant}", prefix, _chunked(put, body, te, extra))


def http_valid_chunked(rng: random.Random, target: Target, prefix: list[Request]) -> HttpCase:
    """Chunked bodies that are valid, if unusual: answered 204."""
    put = _put(rng, target, 0)
    variant, body = rng.choice([
        ("many-tiny", b"1\r\na\r\n" * 5000 + b"0\r\n\r\n"),
        ("extension", b"3;name=value\r\nabc\r\n0\r\n\r\n"),
        ("upper-hex", b"A\r\n0123456789\r\n0\r\n\r\n"),
        ("leading-zeros", b"0003\r\nabc\r\n0\r\n\r\n"),
        ("trailer", b"3\r\nabc\r\n0\r\nX-Trailer: t\r\n\r\n"),
        ("empty", b"0\r\n\r\n"),
    ])
    return _case(f"chunked-valid/{variant}", prefix, _chunked(put, body), [put])


def http_body_longer(rng: random.Random, target: Target, prefix: list[Request]) -> HttpCase:
    put = _put(rng, target)
    extra = rng.choice([b"X", b"\x00" * 16, b"\r\n\r\n", rng.randbytes(300), b"GET /admin/status HTTP/1.1\r\n\r\n"])
    return _case("body-longer/extra-bytes", prefix, put.encode() + extra, [put])


def http_body_shorter(rng: random.Random, target: Target, prefix: list[Request]) -> HttpCase:
    put = _put(rng, target, rng.choice([17, 300, 4096]))
    cut = rng.randint(0, len(put.body) - 1)
    half_close = rng.random() < 0.5
    return _case("body-shorter/" + ("half-close" if half_close else "wait"), prefix, put.head() + put.body[:cut],
                 half_close=half_close)


GARBAGE: list[tuple[str, Callable[[random.Random], bytes]]] = [
    ("random", lambda rng: rng.randbytes(rng.choice([1, 7, 64, 1000]))),
    ("nul", lambda rng: b"\x00" * rng.choice([1, 10, 1000])),
    ("word", lambda rng: b"GARBAGE\r\n\r\n"),
    ("partial-request", lambda rng: b"GET /kv/"),
    ("bad-version-request", lambda rng: b"GET /admin/status HTTP/7.7\r\n\r\n"),
    ("crlfs", lambda rng: b"\r\n" * 1000),
    ("tls-hello", lambda rng: bytes.fromhex("16030100a5010000a10303") + rng.randbytes(32)),
    ("h2-preface", lambda rng: b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
    ("high-bytes", lambda rng: bytes(range(128, 256))),
]


def http_pipelined_garbage(rng: random.Random, target: Target, prefix: list[Request]) -> HttpCase:
    request = valid_request(rng, target)
    variant, garbage = rng.choice(GARBAGE)
    return _case(f"pipelined-garbage/{variant}", prefix, request.encode() + garbage(rng), [request])


def http_half_close(rng: random.Random, target: Target, prefix: list[Request]) -> HttpCase:
    request = valid_request(rng, target)
    if rng.random() < 0.5:
        return _case("half-close/after-request", prefix, request.encode(), [request], half_close=True)
    return _case("half-close/inside-next-request", prefix, request.encode() + b"GET /admin/sta", [request],
                 half_close=True)


def http_nul(rng: random.Random, target: Target, prefix: list[Request]) -> HttpCase:
    base = _mutable(rng, target)
    head = base.head()
    at = rng.randrange(len(head) - 4)
    return _case("nul/in-head", prefix, head[:at] + b"\x00" + head[at:] + (base.body or b""))


def http_byte_mutation(rng: random.Random, target: Target, prefix: list[Request]) -> HttpCase:
    base = Request("PUT", _kv(fuzz_key(rng, target)), body=_value(rng)) if rng.random() < 0.5 else \
        Request("GET", rng.choice([b"/admin/status", _kv(fuzz_key(rng, target)), b"/metrics"]))
    data = bytearray(base.encode())
    variant = rng.choice(["flip", "insert", "delete", "duplicate", "truncate"])
    head_end = data.index(b"\r\n\r\n") + 4
    for _ in range(rng.randint(1, 4)):
        at = rng.randrange(head_end)
        if variant == "flip":
            data[at] ^= 1 << rng.randrange(8)
        elif variant == "insert":
            data[at:at] = rng.randbytes(rng.randint(1, 4))
        elif variant == "delete":
            del data[at:at + rng.randint(1, 4)]
        elif variant == "duplicate":
            data[at:at] = data[at:at + rng.randint(1, 40)]
        else:
            del data[at:]
            break
        head_end = min(head_end, len(data))
    return _case(f"bytes/{variant}", prefix, bytes(data), half_close=variant == "truncate")


# (label, key text as sent in the path, statuses); the keys of writes all start with the fuzz prefix.
def _bad_keys(target: Target) -> list[tuple[str, bytes, frozenset[int] | None]]:
    p = target.fuzz_prefix.encode()
    return [
        ("invalid-utf8", p + b"%FF%FE", BAD_REQUEST),
        ("overlong-utf8", p + b"%C0%AF", BAD_REQUEST),
        ("surrogate", p + b"%ED%A0%80", BAD_REQUEST),
        ("raw-high-bytes", p + b"\xff\xfe", BAD_REQUEST),
        ("1025-bytes", p + b"k" * (1025 - len(p)), BAD_REQUEST),
        ("1024-bytes", p + b"k" * (1024 - len(p)), ANY),
        ("1025-bytes-encoded", p + b"%41" * (1025 - len(p)), BAD_REQUEST),
        ("60000-bytes", p + b"k" * 60000, frozenset({400, 414, 431})),
        ("nul", p + b"%00", ANY),
        ("lone-percent", p + b"%", ANY),
        ("bad-escape", p + b"%G1%2", ANY),
        ("double-encoded", p + b"%252F", ANY),
        ("slashes", p + b"/a//b/../c", ANY),
        ("encoded-slash", p + b"%2F..%2F", ANY),
        ("unicode", p + quote("-ключ-\u2603-\U0001f600").encode(), ANY),
        ("plus", p + b"+a+", ANY),
        ("empty", b"", BAD_REQUEST),
    ]


def http_bad_key(rng: random.Random, target: Target, prefix: list[Request]) -> HttpCase:
    variant, key, statuses = rng.choice(_bad_keys(target))
    method = rng.choice(["GET", "PUT", "DELETE", "REPLICA"])
    if method == "REPLICA":
        request = Request("GET", b"/admin/replica/" + key, statuses=statuses)
    else:
        request = Request(method, b"/kv/" + key, body=b"v" if method == "PUT" else None, statuses=statuses)
    return _case(f"key/{variant}", prefix, request.encode(), [request])


# Quorum values a correct node refuses (400), and unusual ones it may take.
# ``%EF%BC%92`` is a full-width 2, ``%D9%A2`` an Arabic-Indic 2, ``%F0%9D%9F%90`` a mathematical bold 2:
# Python's int() takes all three, the contract's "integer" does not.
BAD_QUORUMS = [b"0", b"-1", b"4", b"99", b"99999999999999999999", b"9" * 5000, b"true", b"false", b"2.0", b"1e0",
               b"0x2", b"%EF%BC%92", "\uff12".encode(), b"%D9%A2", b"%F0%9D%9F%90", b"%00", b"2%00", b"2abc", b"abc",
               b"2&{name}=abc", b"NaN", b"-0x1"]
ODD_QUORUMS = [b"02", b"+2", b"%202", b"2%20", b"", b"abc&{name}=2", b"1_0"]


def http_bad_quorum(rng: random.Random, target: Target, prefix: list[Request]) -> HttpCase:
    bad = rng.random() < 0.8
    value = rng.choice(BAD_QUORUMS if bad else ODD_QUORUMS)
    if rng.random() < 0.5:
        name, method, body = "r", "GET", None
    else:
        name, method, body = "w", rng.choice(["PUT", "DELETE"]), (b"v" if rng.random() < 0.5 else None)
        if method == "DELETE":
            body = None
    query = b"?" + name.encode() + b"=" + value.replace(b"{name}", name.encode())
    statuses = BAD_REQUEST if bad else ANY
    request = Request(method, _kv(fuzz_key(rng, target)) + query, body=body if method == "PUT" else None,
                      statuses=statuses)
    label = f"quorum/{'bad' if bad else 'odd'}-{value[:12].decode('ascii', 'backslashreplace')}"
    return _case(label, prefix, request.encode(), [request])


def _context_bytes(data: Any) -> bytes:
    return base64.urlsafe_b64encode(msgpack.packb(data, use_bin_type=True)).rstrip(b"=")


def _raw_context(packed: bytes) -> bytes:
    return base64.urlsafe_b64encode(packed).rstrip(b"=")


COUNTERS = [0, -1, -2**63, 2**63, 2**64 - 2, 2**64 - 1, 1.5, float("inf"), True, False, None, "1", b"1"]


def _bad_contexts(rng: random.Random) -> list[tuple[str, bytes, frozenset[int] | None]]:
    valid = msgpack.packb([1, {"fz-actor": 3}, [["fz-actor", 5]]], use_bin_type=True)
    counter = rng.choice(COUNTERS)
    return [
        ("not-base64", b"%%%not-base64", BAD_REQUEST),
        ("spaces", b"a b c d", BAD_REQUEST),
        ("non-ascii", b"\xff\xfe\xfd", BAD_REQUEST),
        ("bad-msgpack", _raw_context(b"\xc1\xc1\xc1"), BAD_REQUEST),
        ("truncated-msgpack", _raw_context(valid[:-1]), BAD_REQUEST),
        ("trailing-bytes", _raw_context(valid + b"\x00"), BAD_REQUEST),
        ("standard-alphabet", base64.b64encode(msgpack.packb([1, {"a/b?": 1}, []])) + b"+/", ANY),
        ("not-a-list", _context_bytes({"a": 1}), BAD_REQUEST),
        ("int", _context_bytes(5), BAD_REQUEST),
        ("short", _context_bytes([1]), BAD_REQUEST),
        ("format-2", _context_bytes([2, {}, []]), BAD_REQUEST),
        ("format-true", _context_bytes([True, {"a": 1}, []]), BAD_REQUEST),
        ("vector-list", _context_bytes([1, [], []]), BAD_REQUEST),
        ("cloud-map", _context_bytes([1, {}, {}]), BAD_REQUEST),
        ("cloud-short-dot", _context_bytes([1, {}, [["a"]]]), BAD_REQUEST),
        (f"vector-counter-{counter!r}", _context_bytes([1, {"fz-actor": counter}, []]), BAD_REQUEST),
        (f"cloud-counter-{counter!r}", _context_bytes([1, {}, [["fz-actor", counter]]]), BAD_REQUEST),
        ("actor-int", _context_bytes([1, {5: 1}, []]), BAD_REQUEST),
        ("actor-bytes", _context_bytes([1, {b"a": 1}, []]), BAD_REQUEST),
        ("actor-nil", _context_bytes([1, {None: 1}, []]), BAD_REQUEST),
        ("deep-nesting", _raw_context(b"\x93\x01\x80" + b"\x91" * 5000 + b"\xc0"), BAD_REQUEST),
        ("counter-max", _context_bytes([1, {"fz-actor": 2**63 - 1}, []]), ANY),
        ("many-actors", _context_bytes([1, {f"fz-a{i}": i + 1 for i in range(2000)}, []]), ANY),
        ("empty", b"", ANY),
        ("padding", _raw_context(valid) + b"==", ANY),
    ]


def http_bad_context(rng: random.Random, target: Target, prefix: list[Request]) -> HttpCase:
    variant, header, statuses = rng.choice(_bad_contexts(rng))
    method = rng.choice(["PUT", "DELETE"])
    request = Request(method, _kv(fuzz_key(rng, target)), headers=((b"X-Context", header),),
                      body=b"v" if method == "PUT" else None, statuses=statuses)
    return _case(f"context/{variant}", prefix, request.encode(), [request])


def _deep(depth: int) -> bytes:
    return b"[" * depth


def _admin_bodies(target: Target, path: bytes) -> list[tuple]:
    """``(label, body[, statuses])``: bodies a correct node answers 400 unless said otherwise (none of
    them may have an effect)."""
    too_large = frozenset({400, 413})  # over a body limit the node may refuse before parsing
    common = [("null", b"null"), ("number", b"5"), ("string", b'"x"'), ("list", b"[]"), ("list-of-object", b"[{}]"),
              ("deep-30000", _deep(30_000)), ("deep-object-10000", b'{"a":' * 10_000),
              ("deep-100000", _deep(100_000), too_large), ("deep-object-50000", b'{"a":' * 50_000, too_large),
              ("truncated", b'{"'),
              ("non-utf8", b'{"\xff": 1}'), ("nan", b"NaN"), ("huge-number", b"1" * 5000),
              ("nul", b"\x00"), ("bom", b"\xef\xbb\xbf{}" if path != b"/admin/leave" else b"\xef\xbb\xbf[]")]
    peer = target.peers[0]
    if path == b"/admin/join":
        return common + [
            ("seed-null", b'{"seed": null}'), ("seed-number", b'{"seed": 5}'), ("seed-list", b'{"seed": ["a"]}'),
            ("seed-object", b'{"seed": {"a": 1}}'), ("seed-empty", b'{"seed": ""}'), ("seed-true", b'{"seed": true}'),
            ("seed-no-port", b'{"seed": "nohost"}'), ("seed-port-99999", b'{"seed": "h:99999"}'),
            ("seed-port-0", b'{"seed": "h:0"}'),
            ("seed-huge", b'{"seed": "' + b"x" * 100_000 + b':1"}', frozenset({400, 409, 413})),
            ("seed-inf", b'{"seed": 1e999}'),
            ("replace-number", _json({"seed": peer, "replace": 5})),
            ("replace-empty", _json({"seed": peer, "replace": ""})),
            ("replace-list", _json({"seed": peer, "replace": ["n1"]})),
            ("dry-run-string", _json({"seed": peer, "dry_run": "yes"})),
            ("dry-run-null", _json({"seed": peer, "dry_run": None})),
            ("unknown-field", _json({"seed": peer, "bogus": 1})), ("no-seed", b"{}"),
        ]
    if path == b"/admin/remove":
        ghost = f"{target.fuzz_prefix}-ghost"
        return common + [
            ("node-null", b'{"node": null}'), ("node-number", b'{"node": 5}'), ("node-empty", b'{"node": ""}'),
            ("node-list", b'{"node": ["n1"]}'), ("node-object", b'{"node": {"n1": 1}}'), ("no-node", b"{}"),
            ("dry-run-string", _json({"node": ghost, "dry_run": "true"})),
            ("dry-run-number", _json({"node": ghost, "dry_run": 1})),
            ("unknown-field", _json({"node": ghost, "extra": 1})),
        ]
    # /admin/leave: every body below is refused; never {} or an empty body or dry_run false (a real leave).
    return common + [
        ("dry-run-string", b'{"dry_run": "true"}'), ("dry-run-number", b'{"dry_run": 1}'),
        ("dry-run-null", b'{"dry_run": null}'), ("dry-run-list", b'{"dry_run": [true]}'),
        ("dry-run-object", b'{"dry_run": {"a": 1}}'), ("unknown-field", b'{"dry_run": true, "extra": 1}'),
        ("truncated-object", b'{"dry_run": true'),
    ]


def http_admin_body(rng: random.Random, target: Target, prefix: list[Request]) -> HttpCase:
    path = rng.choice([b"/admin/join", b"/admin/remove", b"/admin/leave"])
    variant, body, *statuses = rng.choice(_admin_bodies(target, path))
    assert path != b"/admin/leave" or body not in (b"", b"{}") and b"false" not in body
    request = Request("POST", path, headers=((b"Content-Type", b"application/json"),), body=body,
                      statuses=statuses[0] if statuses else BAD_REQUEST, mutable=False)
    return _case(f"admin-body/{path.decode().rpartition('/')[2]}-{variant}", prefix, request.encode(), [request])


def http_expect_continue(rng: random.Random, target: Target, prefix: list[Request]) -> HttpCase:
    value = rng.choice([b"100-continue", b"100-Continue", b"garbage", b""])
    put = _put(rng, target)
    request = Request("PUT", put.target, headers=((b"Expect", value),), body=put.body, statuses=ANY)
    return _case(f"expect/{value.decode() or 'empty'}", prefix, request.encode(), [request])


def http_head_options(rng: random.Random, target: Target, prefix: list[Request]) -> HttpCase:
    method = rng.choice(["HEAD", "OPTIONS"])
    path = rng.choice([b"/admin/status", _kv(_read_key(rng, target)), b"/metrics", b"/nowhere",
                       b"*" if method == "OPTIONS" else b"/admin/ring"])
    request = Request(method, path, statuses=ANY)
    return _case(f"method/{method}", prefix, request.encode(), [request])


def http_odd_path(rng: random.Random, target: Target, prefix: list[Request]) -> HttpCase:
    key = fuzz_key(rng, target)
    variant, path = rng.choice([
        ("absolute-form", b"http://fuzz/admin/status"),
        ("asterisk", b"*"),
        ("double-slash", b"//admin//status"),
        ("trailing-slash", b"/admin/status/"),
        ("fragment", b"/kv/" + key.encode() + b"#frag"),
        ("empty-query", b"/kv/" + key.encode() + b"?"),
        ("ampersands", b"/kv/" + key.encode() + b"?&&&=&="),
        ("long-query", b"/kv/" + key.encode() + b"?x=" + b"y" * 50_000),
        ("bad-query-escape", b"/admin/status?x=%zz%"),
        ("semicolon", b"/kv/" + key.encode() + b";p=1"),
        ("kv-root", b"/kv"),
        ("replica-root", b"/admin/replica"),
        ("dot-segments", b"/admin/../admin/status"),
        ("encoded-admin", b"/admin/%73tatus"),
        ("upper-case", b"/ADMIN/STATUS"),
        ("unicode-raw", "/admin/stätus".encode()),
    ])
    request = Request("GET", path, statuses=ANY)
    return _case(f"path/{variant}", prefix, request.encode(), [request])


HTTP_FAMILIES: list[tuple[Callable[[random.Random, Target, list[Request]], HttpCase], int]] = [
    (http_valid_pipeline, 4), (http_bad_method, 5), (http_bad_version, 5), (http_bad_headers, 8),
    (http_bad_content_length, 7), (http_bad_chunked, 8), (http_valid_chunked, 3), (http_body_longer, 5),
    (http_body_shorter, 4), (http_pipelined_garbage, 8), (http_half_close, 5), (http_nul, 4),
    (http_byte_mutation, 8), (http_bad_key, 8), (http_bad_quorum, 8), (http_bad_context, 9),
    (http_admin_body, 9), (http_expect_continue, 3), (http_head_options, 4), (http_odd_path, 5),
]


def http_cases(rng: random.Random, target: Target, count: int) -> list[HttpCase]:
    """``count`` HTTP cases drawn from every family by weight."""
    families, weights = zip(*HTTP_FAMILIES, strict=True)
    cases = []
    for _ in range(count):
        family = rng.choices(families, weights)[0]
        cases.append(family(rng, target, _with_prefix(rng, target)))
    return cases


# -- peer frames ---------------------------------------------------------------------------------

REQUEST, RESPONSE, ERROR = 0, 1, 2
TIMESTAMP = 1_700_000_000_000


def frame_bytes(body: bytes) -> bytes:
    return struct.pack("!I", len(body)) + body


def frame(message: Any) -> bytes:
    return frame_bytes(msgpack.packb(message, use_bin_type=True))


def _sibling(value: bytes = b"v", counter: int = 1, actor: str = "fz-actor", deleted: bool = False) -> list:
    return [actor, counter, [{}, []], value, deleted, TIMESTAMP]


def _packed(siblings: list) -> bytes:
    return msgpack.packb(siblings, use_bin_type=True)


def _bad_sibling(rng: random.Random) -> tuple[str, Any]:
    good = _sibling()
    field_index, bad = rng.choice([
        (0, 5), (0, None), (0, b"fz-actor"),
        (1, 0), (1, -1), (1, 2**64 - 1), (1, 1.5), (1, True), (1, "1"),
        (2, None), (2, [{}, {}]), (2, [{"a": 0}, []]), (2, [{"a": 2**63}, []]), (2, 5),
        (3, "str-not-bytes"), (3, None), (3, 5), (3, [b"x"]),
        (4, 1), (4, "no"), (4, None),
        (5, 2**64 - 1), (5, 1.5), (5, None), (5, "now"),
    ])
    sibling = list(good)
    sibling[field_index] = bad
    return f"sibling-field{field_index}-{type(bad).__name__}", sibling


def payloads(op: str, rng: random.Random, target: Target) -> list[tuple[str, Any, bool]]:
    """Every variant for ``op``: valid ones (with fuzz keys) and malformed ones a node must refuse."""
    k = fuzz_key(rng, target).encode()
    p = rng.randrange(target.partitions)
    valid = _packed([_sibling(rng.randbytes(8), rng.randint(1, 1000))])
    big = target.max_value_size * 2
    bad_label, bad_sibling = _bad_sibling(rng)
    junk = [("nil", None), ("int", 5), ("str", "ab"), ("bytes", b"k"), ("map", {"a": 1}), ("empty-list", []),
            ("nested", [[[[[[[[[[1]]]]]]]]]]), ("huge-int", 2**64 - 1), ("float", 1.5), ("bool", True)]
    if op == "get":
        read = rng.choice(target.read_keys).encode() if target.read_keys else k
        return [("valid", [k], False), ("valid-read-key", [read], False),
                ("two-keys", [k, k], True), ("key-int", [5], True), ("key-nil", [None], True),
                ("key-list", [[k]], True), ("key-map", [{"a": 1}], True), ("key-str", [k.decode()], True),
                ("key-huge", [b"k" * 100_000], False)] + [(f"payload-{n}", v, True) for n, v in junk]
    if op == "ping":
        return [("valid", None, False)] + [(f"payload-{n}", v, False) for n, v in junk]
    if op == "cluster_info":
        return [("valid", None, False)] + [(f"payload-{n}", v, False) for n, v in junk]
    if op == "put":
        return [("valid", [k, valid, None], False), ("valid-hint", [k, valid, f"{target.fuzz_prefix}-ghost"], False),
                ("oversized-value", [k, _packed([_sibling(b"x" * big)]), None], False),
                ("short", [k, valid], True), ("long", [k, valid, None, 1], True), ("key-int", [5, valid, None], True),
                ("key-str", [k.decode(), valid, None], True), ("key-nil", [None, valid, None], True),
                ("packed-str", [k, "not-bytes", None], True), ("packed-list", [k, [_sibling()], None], True),
                ("packed-garbage", [k, b"\xc1\xc1", None], True), ("packed-map", [k, _packed({"a": 1}), None], True),
                (bad_label, [k, _packed([bad_sibling]), None], True),
                ("hint-int", [k, valid, 5], True), ("hint-list", [k, valid, ["n1"]], True),
                ] + [(f"payload-{n}", v, True) for n, v in junk]
    if op == "coordinate_put":
        ctx = [{}, []]
        w = rng.choice([0, -1, target.n + 1, 99, 2**64 - 1, True, "2", 2.0, None])
        bad_ctx = rng.choice([None, [], [{}, {}], [{"a": 0}, []], [{"a": 2**63}, []], 5, [{5: 1}, []]])
        hops = rng.choice([-1, "0", 2**64 - 1, None, 1.5])
        return [("valid", [k, b"v", ctx, False, 2, 0], False), ("valid-no-hops", [k, b"v", ctx, False, 2], False),
                ("valid-delete", [k, b"", ctx, True, 1, 0], False),
                (f"w-{w!r}", [k, b"v", ctx, False, w, 0], True),
                (f"deleted-{rng.choice(['1', 'str', 'nil'])}", [k, b"v", ctx, rng.choice([1, "no", None]), 2, 0], True),
                ("value-str", [k, "str-not-bytes", ctx, False, 2, 0], True),
                ("value-nil", [k, None, ctx, False, 2, 0], True),
                ("value-oversized", [k, b"x" * big, ctx, False, 2, 0], True),
                ("key-int", [5, b"v", ctx, False, 2, 0], True), ("key-str", [k.decode(), b"v", ctx, False, 2, 0], True),
                ("key-empty", [b"", b"v", ctx, False, 2, 0], True),
                ("key-2000", [b"f" * 2000, b"v", ctx, False, 2, 0], True),
                ("context-bad", [k, b"v", bad_ctx, False, 2, 0], True),
                (f"hops-{hops!r}", [k, b"v", ctx, False, 2, hops], True),
                ("short", [k, b"v", ctx], True), ("long", [k, b"v", ctx, False, 2, 0, 0, 0], True),
                ] + [(f"payload-{n}", v, True) for n, v in junk]
    if op == "put_many":
        entries = [[k, valid]]
        return [("valid", [2**40, entries], False), ("valid-hint", [2**40, entries, None], False),
                ("stale", [0, entries], True), ("version-str", ["1", entries], True),
                ("version-bool", [True, entries], True),
                ("version-float", [1.5, entries], True), ("version-nil", [None, entries], True),
                ("entries-int", [2**40, 5], True), ("entries-map", [2**40, {k: valid}], True),
                ("entry-short", [2**40, [[k]]], True), ("entry-packed-str", [2**40, [[k, "str"]]], True),
                ("entry-key-int", [2**40, [[5, valid]]], True), ("entry-key-str", [2**40, [[k.decode(), valid]]], True),
                ("entry-garbage", [2**40, [[k, b"\xc1"]]], True),
                ("entry-bad-sibling", [2**40, [[k, _packed([bad_sibling])]]], True),
                ("hint-int", [2**40, entries, 5], True), ("extra", [2**40, entries, None, "x"], True),
                ] + [(f"payload-{n}", v, True) for n, v in junk]
    if op == "aae_hashes":
        level = rng.randint(0, 10)
        return [("valid", [p, level, sorted(rng.sample(range(1 << level), min(4, 1 << level)))], False),
                ("valid-many-indices", [p, 10, [rng.randrange(1024) for _ in range(20_000)]], False),
                ("partition-1e6", [10**6, 0, [0]], True), ("partition-negative", [-1, 0, [0]], True),
                ("partition-u64", [2**64 - 1, 0, [0]], True), ("partition-str", ["0", 0, [0]], True),
                ("partition-nil", [None, 0, [0]], True), ("partition-float", [1.5, 0, [0]], True),
                ("partition-random", [rng.randrange(target.partitions, 2**31), 0, [0]], True),
                ("level-negative", [p, -1, [0]], True), ("level-11", [p, 11, [0]], True),
                ("level-huge", [p, 2**63, [0]], True),
                ("level-bool", [p, True, [0]], True), ("index-out-of-range", [p, 0, [1]], True),
                ("indices-str", [p, 0, "0"], True), ("indices-nil", [p, 0, None], True),
                ("indices-huge", [p, 10, list(range(100_000))], True), ("short", [p, 0], True),
                ] + [(f"payload-{n}", v, True) for n, v in junk]
    if op == "aae_records":
        return [("valid", [p, [rng.randrange(1024) for _ in range(3)]], False),
                ("partition-1e6", [10**6, [0]], True), ("partition-str", ["x", [0]], True),
                ("partition-nil", [None, [0]], True), ("leaves-int", [p, 5], True), ("leaves-nil", [p, None], True),
                ("leaves-str", [p, "ab"], True), ("leaf-nil", [p, [None]], True), ("leaf-list", [p, [[1]]], True),
                ("leaves-out-of-range", [p, list(range(1024, 101_024))], True), ("short", [p], True),
                ] + [(f"payload-{n}", v, True) for n, v in junk]
    if op == "hints_for":
        return [("valid", rng.choice(target.members), False), ("valid-ghost", f"{target.fuzz_prefix}-ghost", False),
                ("bytes", rng.choice(target.members).encode(), True), ("list", [target.members[0]], True),
                ] + [(f"payload-{n}", v, True) for n, v in junk if n not in ("str",)]
    if op == "reap":
        return [("valid", [k, rng.randbytes(16)], False), ("short", [k], True), ("long", [k, b"d", b"x"], True),
                ("key-int", [5, b"d"], True), ("key-str", ["s", b"d"], True), ("digest-str", [k, "s"], True),
                ("digest-nil", [k, None], True)] + [(f"payload-{n}", v, True) for n, v in junk]
    if op == "goodbye":  # never [member]: that would mark it down
        ghost = f"{target.fuzz_prefix}-ghost"
        return [("not-a-peer", [ghost], True), ("empty", [], True), ("id-int", [1], True), ("id-list", [["n1"]], True),
                ("id-map", [{"n1": 1}], True), ("id-nil", [None], True), ("id-bytes", [b"n1"], True),
                ("two-ids", [ghost, ghost], True)] + [(f"payload-{n}", v, True) for n, v in junk if n != "str"]
    if op == "gossip":  # never a valid state: always broken, and of a foreign cluster
        return [(label, state, True) for label, state in _bad_states(rng, target)] + \
               [(f"payload-{n}", v, True) for n, v in junk]
    if op == "join":  # never a valid join: a field is always of the wrong type or an address is bad
        ghost = f"{target.fuzz_prefix}-ghost"
        bad_address = rng.choice(["nohostport", "127.0.0.1:0", "127.0.0.1:99999", ":80", "host:", "", "h:-1"])
        return [("short", [ghost, "127.0.0.1:1"], True), ("id-int", [1, "127.0.0.1:1", "127.0.0.1:2"], True),
                ("id-empty", ["", "127.0.0.1:1", "127.0.0.1:2"], True),
                ("id-list", [[ghost], "127.0.0.1:1", "127.0.0.1:2"], True),
                ("peer-bad", [ghost, bad_address, "127.0.0.1:2"], True),
                ("http-bad", [ghost, "127.0.0.1:1", bad_address], True),
                ("peer-int", [ghost, 5, "127.0.0.1:2"], True), ("http-nil", [ghost, "127.0.0.1:1", None], True),
                ("options-not-map", [ghost, bad_address, "127.0.0.1:2", 5], True),
                ("options-unknown", [ghost, "127.0.0.1:1", bad_address, {"bogus": 1}], True),
                ("options-dry-run-str", [ghost, bad_address, "127.0.0.1:2", {"dry_run": "yes"}], True),
                ("five", [ghost, "a", "b", {}, 5], True)] + [(f"payload-{n}", v, True) for n, v in junk]
    raise ValueError(f"no payloads for {op!r}")


def _bad_states(rng: random.Random, target: Target) -> list[tuple[str, Any]]:
    cluster = f"{target.fuzz_prefix}-foreign"
    member = [f"{target.fuzz_prefix}-m", "127.0.0.1:1", "127.0.0.1:2", "up", 1]
    good = {"members": [member], "ownership": [member[0]] * target.partitions, "ring_version": 1,
            "ring_author": member[0], "cluster": cluster, "progress": [], "replaced": []}

    def broken(**changes: Any) -> dict[str, Any]:
        return {**good, **changes}

    return [
        ("foreign", good),  # well-formed, but of another cluster: refused
        ("members-int", broken(members=5)), ("members-map", broken(members={"a": 1})),
        ("member-short", broken(members=[member[:3]])), ("member-id-int", broken(members=[[5, *member[1:]]])),
        ("member-status", broken(members=[[*member[:3], "zombie", 1]])),
        ("member-version-huge", broken(members=[[*member[:4], 2**64 - 1]])),
        ("member-version-bool", broken(members=[[*member[:4], True]])),
        ("member-unhashable-id", broken(members=[[["x"], *member[1:]]])),
        ("ownership-short", broken(ownership=[member[0]])), ("ownership-int", broken(ownership=5)),
        ("ownership-unknown", broken(ownership=["nobody"] * target.partitions)),
        ("ring-version-str", broken(ring_version="1")), ("ring-version-zero", broken(ring_version=0)),
        ("ring-author-int", broken(ring_author=5)), ("cluster-empty", broken(cluster="")),
        ("cluster-int", broken(cluster=5)), ("progress-map", broken(progress={"a": 1})),
        ("progress-bad", broken(progress=[["n1", -1, 0, 0]])), ("replaced-bad", broken(replaced=[["x", "y"]])),
        ("replaced-int", broken(replaced=5)), ("missing-keys", {"members": []}),
        ("list", [good]),
    ]


PEER_OPS = ["get", "ping", "put", "coordinate_put", "aae_hashes", "aae_records", "hints_for", "goodbye",
            "gossip", "join", "cluster_info", "reap", "put_many"]


def _request_id(rng: random.Random) -> int:
    return rng.randrange(1, 2**31)


def peer_op_case(rng: random.Random, target: Target) -> PeerCase:
    """One op with one of its payload variants, often followed by a ping on the same connection."""
    op = rng.choice(PEER_OPS)
    label, payload, refused = rng.choice(payloads(op, rng, target))
    rid = _request_id(rng)
    data = frame([REQUEST, rid, op, payload])
    ids = [rid]
    if rng.random() < 0.5:
        ping = rid + 1
        data += frame([REQUEST, ping, "ping", None])
        ids.append(ping)
    return PeerCase(f"op/{op}/{label}", data, len(ids), tuple(ids), (rid,) if refused else ())


def peer_unknown_op(rng: random.Random, target: Target) -> PeerCase:
    op = rng.choice([f"{target.fuzz_prefix}-op", "", "PING", "get\x00", "a" * 5000, "\u2603", "Ping "])
    rid = _request_id(rng)
    return PeerCase(f"op/unknown-{op[:8]!r}", frame([REQUEST, rid, op, None]), 1, (rid,), (rid,))


def _ping(rid: int) -> bytes:
    return frame([REQUEST, rid, "ping", None])


def peer_frame_case(rng: random.Random, target: Target) -> PeerCase:
    """Frame-level damage: shapes, types, lengths, encodings."""
    rid = _request_id(rng)
    raw = msgpack.packb([REQUEST, rid, "ping", None], use_bin_type=True)
    variant, data, well_framed, ids = rng.choice([
        ("not-a-list", frame(rng.choice([5, "s", {"a": 1}, None, b"bytes", 1.5])), False, ()),
        ("empty-list", frame([]), False, ()),
        ("kind-3", frame([3, rid, "ping", None]), False, ()),
        ("kind-negative", frame([-1, rid, "ping", None]), False, ()),
        ("kind-str", frame(["0", rid, "ping", None]), False, ()),
        ("request-short", frame([REQUEST, rid, "ping"]), False, ()),
        ("request-long", frame([REQUEST, rid, "ping", None, 5]), False, ()),
        ("id-str", frame([REQUEST, str(rid), "ping", None]), False, ()),
        ("id-float", frame([REQUEST, 1.5, "ping", None]), False, ()),
        ("id-nil", frame([REQUEST, None, "ping", None]), False, ()),
        ("op-int", frame([REQUEST, rid, 5, None]), False, ()),
        ("op-bytes", frame([REQUEST, rid, b"ping", None]), False, ()),
        ("op-nil", frame([REQUEST, rid, None, None]), False, ()),
        ("op-non-utf8", frame_bytes(b"\x94\x00" + msgpack.packb(rid) + b"\xa4p\xffng\xc0"), False, ()),
        ("truncated-msgpack", frame_bytes(raw[:-1]), False, ()),
        ("trailing-bytes", frame_bytes(raw + b"\x00"), False, ()),
        ("zero-length", frame_bytes(b""), False, ()),
        ("huge-length", struct.pack("!I", 2**31 - 1) + raw, False, ()),
        ("length-u32-max", struct.pack("!I", 2**32 - 1) + raw, False, ()),
        ("deep-nesting", frame_bytes(b"\x94\x00" + msgpack.packb(rid) + b"\xa4ping" + b"\x91" * 100_000 + b"\xc0"),
         False, ()),
        ("garbage", frame_bytes(rng.randbytes(rng.choice([1, 16, 4096]))), False, ()),
        ("short-frame", struct.pack("!I", len(raw) + 10) + raw, True, ()),
        ("partial-length", b"\x00\x00", True, ()),
        ("response-to-nothing", frame([RESPONSE, rid, "x"]) + _ping(rid + 1), True, (rid + 1,)),
        ("error-to-nothing", frame([ERROR, rid, "err"]) + _ping(rid + 1), True, (rid + 1,)),
        ("response-short", frame([RESPONSE, rid]), False, ()),
        ("id-negative", frame([REQUEST, -1, "ping", None]), True, (-1,)),
        ("id-zero", frame([REQUEST, 0, "ping", None]), True, (0,)),
        ("id-u64-max", frame([REQUEST, 2**64 - 1, "ping", None]), True, (2**64 - 1,)),
        ("id-i64-min", frame([REQUEST, -2**63, "ping", None]), True, (-2**63,)),
        ("payload-deep-200", frame([REQUEST, rid, "get", _nested(200)]), True, (rid,)),
        ("many-pings", b"".join(_ping(rid + i) for i in range(50)), True, tuple(rid + i for i in range(50))),
    ])
    refused = (rid,) if variant == "payload-deep-200" else ()
    return PeerCase(f"frame/{variant}", data, count_frames(data), tuple(ids), refused, well_framed)


def count_frames(data: bytes) -> int:
    """Frames in ``data`` by their length prefixes (a last, partial one counts)."""
    count, at = 0, 0
    while at < len(data):
        count += 1
        if len(data) - at < 4:
            break
        at += 4 + struct.unpack("!I", data[at:at + 4])[0]
    return count


def _nested(depth: int) -> Any:
    value: Any = [b"k"]
    for _ in range(depth):
        value = [value]
    return value


def peer_garbage_after(rng: random.Random, target: Target) -> PeerCase:
    """A valid request followed by an undecodable frame: answered or closed, never hung."""
    case = peer_op_case(rng, target)
    junk = frame_bytes(rng.choice([b"\xc1", b"", rng.randbytes(32)]))
    return PeerCase(f"{case.label}+garbage", case.data + junk, case.frames + 1, case.requests, case.refused,
                    well_framed=False)


PEER_FAMILIES = [(peer_op_case, 14), (peer_unknown_op, 1), (peer_frame_case, 5), (peer_garbage_after, 2)]


def peer_cases(rng: random.Random, target: Target, frames: int) -> list[PeerCase]:
    """Peer cases holding about ``frames`` frames in all."""
    families, weights = zip(*PEER_FAMILIES, strict=True)
    cases: list[PeerCase] = []
    total = 0
    while total < frames:
        case = rng.choices(families, weights)[0](rng, target)
        cases.append(case)
        total += case.frames
    return cases
