"""Seeded hostile input against a real 3-node cluster (issue 14): ~1,500 malformed or odd HTTP
requests and ~600 peer frames from ``tests/hostile.py``. A correct node answers every complete
request before it closes (no 5xx), refuses bad peer requests with a typed error, keeps serving,
keeps every acknowledged value, grows by a bounded amount and logs no traceback.

``DYNAMO_FUZZ_SEED`` picks another seed (a failure prints the one to replay);
``DYNAMO_FUZZ_HTTP`` and ``DYNAMO_FUZZ_FRAMES`` scale the run.
"""

from __future__ import annotations

import os
import random
import socket
import struct

import msgpack
import pytest

from dynamod.core.addresses import split_host_port
from dynamod.net.operations import Code
from tests.hostile import RESPONSE, HttpCase, PeerCase, Target, http_cases, peer_cases

pytestmark = pytest.mark.integration

SEED = int(os.environ.get("DYNAMO_FUZZ_SEED", "14"))
HTTP_CASES = int(os.environ.get("DYNAMO_FUZZ_HTTP", "1500"))
PEER_FRAMES = int(os.environ.get("DYNAMO_FUZZ_FRAMES", "600"))
#: RSS a node may gain over the whole run (allocator slack, caches), far below the leaks the
#: fuzzer found before (82 MiB for 1,000 anti-entropy frames, 139 MiB for one unread pipeline)
RSS_GROWTH_BOUND = 64 * 1024 * 1024
READ_KEYS = tuple(f"fz-acked-{i}" for i in range(8))
TYPED_CODES = {code.value for code in Code} - {Code.INTERNAL.value}


class Closed(Exception):
    """The node closed the connection."""


class Stream:
    """Buffered reads from one socket, with a deadline per read."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buffer = b""

    def fill(self) -> None:
        chunk = self.sock.recv(1 << 20)
        if not chunk:
            raise Closed()
        self.buffer += chunk

    def take_until(self, marker: bytes) -> bytes:
        while marker not in self.buffer:
            self.fill()
        head, _, self.buffer = self.buffer.partition(marker)
        return head

    def take(self, size: int) -> bytes:
        while len(self.buffer) < size:
            self.fill()
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data


def read_response(stream: Stream, method: str) -> int:
    """The next final response's status (interim 1xx answers are skipped)."""
    while True:
        head = stream.take_until(b"\r\n\r\n").split(b"\r\n")
        status = int(head[0].split()[1])
        if 100 <= status < 200:
            continue
        headers = {name.lower(): value for name, _, value in (line.partition(b": ") for line in head[1:])}
        length = 0 if method == "HEAD" or status in (204, 304) else int(headers.get(b"content-length", b"0"))
        stream.take(length)
        return status


def dial(address: str, timeout: float = 15.0) -> socket.socket:
    host, port = split_host_port(address)
    return socket.create_connection((host, port), timeout=timeout)


def send(sock: socket.socket, data: bytes) -> None:
    try:
        sock.sendall(data)
    except OSError:
        pass  # the node refused the input and closed: what it answered first is still read


def run_http_case(address: str, case: HttpCase) -> str | None:
    """None if the node handled ``case`` correctly, else what went wrong."""
    sock = dial(address)
    stream = Stream(sock)
    try:
        send(sock, case.data)
        if case.half_close:
            sock.shutdown(socket.SHUT_WR)
        for index, answer in enumerate(case.answers):
            try:
                status = read_response(stream, answer.method)
            except Closed:
                return f"closed before answer {index + 1} of {len(case.answers)}"
            except TimeoutError:
                return f"no answer {index + 1} of {len(case.answers)} within {sock.gettimeout():.0f} s"
            if status >= 500 or (answer.statuses is not None and status not in answer.statuses):
                return f"answer {index + 1} was {status}, expected {sorted(answer.statuses or ['<500'])}"
        if case.half_close:
            try:
                while True:
                    if read_response(stream, "GET") >= 500:
                        return "a 5xx after the owed answers"
            except Closed:
                return None
            except TimeoutError:
                return "the connection stayed open after a half-close"
        sock.settimeout(0.05)  # whatever the node says at once about trailing bytes must not be a 5xx
        try:
            while True:
                if read_response(stream, "GET") >= 500:
                    return "a 5xx for trailing bytes"
        except (Closed, TimeoutError, OSError, ValueError, IndexError):
            return None
    except OSError as exc:
        return f"socket error {exc!r}"
    finally:
        sock.close()


def read_frame(stream: Stream) -> list:
    (length,) = struct.unpack("!I", stream.take(4))
    return msgpack.unpackb(stream.take(length), raw=False, strict_map_key=False)


def typed_refusal(payload: object) -> bool:
    """An ERROR frame's payload that names a known code other than ``internal``."""
    return isinstance(payload, list) and payload[:1] != [] and payload[0] in TYPED_CODES


def run_peer_case(address: str, case: PeerCase) -> str | None:
    sock = dial(address)
    stream = Stream(sock)
    owed = set(case.requests)
    try:
        send(sock, case.data)
        while owed:
            try:
                kind, request_id, payload = read_frame(stream)[:3]
            except Closed:
                return None if not case.well_framed else f"closed with {len(owed)} well-framed request(s) unanswered"
            except TimeoutError:
                return f"{len(owed)} request(s) unanswered within {sock.gettimeout():.0f} s"
            owed.discard(request_id)
            if request_id in case.refused:
                if kind == RESPONSE:
                    return f"request {request_id} answered with a value, not refused"
                if not typed_refusal(payload):
                    return f"request {request_id} refused without a typed code: {payload!r:.200}"
            elif kind != RESPONSE and not typed_refusal(payload):
                return f"request {request_id} failed untyped: {payload!r:.200}"
        return None
    except OSError as exc:
        return f"socket error {exc!r}"
    finally:
        sock.close()


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def test_hostile_input_is_answered_and_nothing_acknowledged_is_lost(make_cluster):
    cluster = make_cluster(nodes=3, partitions=16, http_header_timeout=2.0)
    nodes = [cluster.cluster.node(node_id) for node_id in cluster.ids]
    client = cluster.client("n1")
    acked = {}
    for key in READ_KEYS:
        value = f"acked {key}".encode()
        client.put(key, value)
        acked[key] = value
    target = Target(members=tuple(cluster.ids), peers=tuple(n.peer for n in nodes), read_keys=READ_KEYS,
                    partitions=16, n=3, max_value_size=1024 * 1024)
    rss_before = {n.id: rss(n.pid) for n in nodes}
    rng = random.Random(SEED)
    failures = []
    for index, case in enumerate(http_cases(rng, target, HTTP_CASES)):
        problem = run_http_case(nodes[index % 3].http, case)
        if problem:
            failures.append(f"http #{index} {case.label} at {nodes[index % 3].id}: {problem}; {case.data[:120]!r}")
    for index, case in enumerate(peer_cases(rng, target, PEER_FRAMES)):
        problem = run_peer_case(nodes[index % 3].peer, case)
        if problem:
            failures.append(f"peer #{index} {case.label} at {nodes[index % 3].id}: {problem}")
    replay = f"replay: DYNAMO_FUZZ_SEED={SEED} pytest {__file__}"
    assert not failures, f"{len(failures)} case(s) mishandled ({replay}):\n" + "\n".join(failures[:15])

    for node in nodes:
        assert cluster.running(node.id), f"{node.id} exited ({replay})"
        reader = cluster.client(node.id)
        for key, value in acked.items():
            assert value in reader.get(key).siblings, f"{key} lost at {node.id} ({replay})"
    growth = {n.id: rss(n.pid) - rss_before[n.id] for n in nodes}
    assert max(growth.values()) < RSS_GROWTH_BOUND, f"RSS grew by {growth} ({replay})"
    logs = "".join(p.read_text(errors="replace") for p in cluster.cluster.directory.rglob("*.log"))
    assert "Traceback" not in logs, f"a traceback was logged ({replay})"
