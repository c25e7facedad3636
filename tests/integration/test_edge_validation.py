"""Hostile input at the HTTP edge of real nodes (issue 14): malformed admin bodies, non-ASCII
quorum digits and forged context counters are 4xx with a JSON reason and no effect; a forged
counter can never make a key unwritable; a key's stored size is bounded (warned, then refused,
also when the PUT is forwarded), and a write that shrinks an oversized key is always taken."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request

import msgpack
import pytest

from dynamod.client import ClientError, parse_dot
from dynamod.core.encoding import MAX_COUNTER

pytestmark = pytest.mark.integration


def http(node: str, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    request = urllib.request.Request(f"http://{node}{path}", data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def context_header(vector: dict, cloud: list | None = None) -> str:
    packed = msgpack.packb([1, vector, cloud or []], use_bin_type=True)
    return base64.urlsafe_b64encode(packed).rstrip(b"=").decode("ascii")


def log_text(cluster) -> str:
    return "".join(p.read_text(errors="replace") for p in cluster.cluster.directory.rglob("*.log"))


def test_malformed_admin_bodies_quorum_digits_and_context_counters_are_400s(make_cluster):
    cluster = make_cluster(nodes=3)
    node = cluster.cluster.node("n1").http
    for seed in (None, 5, True, ["a"], {"x": 1}, "", "host:７０００", "nohost"):
        status, _, body = http(node, "POST", "/admin/join", json.dumps({"seed": seed}).encode())
        assert status == 400 and "error" in json.loads(body), (seed, status, body)
    for raw in (b"[" * 100_000, b"{" * 50_000, b'{"seed": ' * 20_000, b"\xff\xfe", b"x" * 70_000):
        status, _, body = http(node, "POST", "/admin/join", raw)
        assert status in (400, 413) and "error" in json.loads(body), (raw[:20], status)
    status, _, _ = http(node, "POST", "/admin/remove", json.dumps({"node": ["n2"]}).encode())
    assert status == 400

    for query in ("w=%EF%BC%92", "w=1_0", "w=%2B2", "w=%202", "w=-1", "w=99999999999999999999"):
        status, _, body = http(node, "PUT", f"/kv/digits?{query}", b"v")
        assert status == 400 and "error" in json.loads(body), (query, status)
    assert http(node, "GET", "/kv/digits?r=%EF%BC%92")[0] == 400
    assert http(node, "GET", "/kv/digits")[0] == 404, "no refused write had an effect"

    # A forged counter beyond the bound is a 400; one at the bound is taken, and the key stays
    # writable (through this node and the others) instead of failing with an overflow for good.
    client = cluster.client("n1")
    actor = client.write("forged", b"first").dot[0]
    for counter in (2**64 - 2, MAX_COUNTER + 1, 0, -1, 1.5, True):
        status, _, body = http(node, "PUT", "/kv/forged", b"bad", {"X-Context": context_header({actor: counter})})
        assert status == 400 and "error" in json.loads(body), (counter, status)
        status, _, _ = http(node, "PUT", "/kv/forged", b"bad", {"X-Context": context_header({}, [[actor, counter]])})
        assert status == 400, (counter, status)
    at_bound = {"X-Context": context_header({actor: MAX_COUNTER})}
    status, headers, _ = http(node, "PUT", "/kv/forged", b"planted", at_bound)
    assert status == 204
    planted = parse_dot(headers.get("X-Version"))
    assert planted[0] != actor and planted[1] == 1, "a claim on dots this node never issued starts a fresh epoch"
    for attempt in range(3):
        for coordinator in ("n1", "n2", "n3"):
            cluster.client(coordinator).write("forged", b"later %d" % attempt)
    read = client.get("forged")
    assert b"later 2" in read.siblings
    client.write("forged", b"merged", context=read.context)
    assert client.get("forged").siblings == [b"merged"]
    assert "Traceback" not in log_text(cluster) and "OverflowError" not in log_text(cluster)


def test_a_key_is_bounded_in_size_warned_then_refused_and_a_shrinking_write_is_taken(make_cluster):
    limit, value = 256 * 1024, b"v" * (60 * 1024)
    cluster = make_cluster(nodes=4, partitions=16, max_value_size=64 * 1024, max_frame_size=1024 * 1024,
                           key_size_warning=128 * 1024, max_key_size=limit)
    ring = cluster.client("n1").ring()
    key = "swelling"
    from dynamod.core.ring import partition_of

    owners = ring["preference_lists"][partition_of(key.encode(), 16)]
    outsider = next(node for node in cluster.ids if node not in owners)
    accepted, refused = 0, None
    for _ in range(10):
        try:
            cluster.client(owners[0]).write(key, value)
            accepted += 1
        except ClientError as error:
            refused = error
            break
    assert refused is not None and refused.status == 413, "blind writes past max_key_size are refused"
    assert refused.body["limit"] == limit and "max_key_size" in refused.body["error"]
    assert 3 <= accepted <= 4, accepted
    before = cluster.client(owners[0]).get(key)
    assert len(before.siblings) == accepted, "the refused write left nothing behind"
    # The same refusal when the PUT is forwarded by a node that holds no copy of the key.
    with pytest.raises(ClientError) as forwarded:
        cluster.client(outsider).write(key, value)
    assert forwarded.value.status == 413 and forwarded.value.body["limit"] == limit
    metrics = cluster.client(owners[0]).metrics()
    warned = [line for line in metrics.splitlines() if line.startswith("dynamod_oversized_key_writes_total")]
    assert warned and float(warned[0].split()[-1]) >= 1
    # A read-modify-write replaces the siblings: the key shrinks below the bound and is taken.
    cluster.client(owners[0]).write(key, b"small", context=before.context)
    after = cluster.client(owners[1]).get(key)
    assert after.siblings == [b"small"]
    for owner in owners:
        replica = cluster.client(owner).replica(key)
        assert replica is not None and len(replica["siblings"]) <= accepted + 1
