"""A real 3-node cluster on loopback: quorums, siblings, failures, crash recovery, bad input."""

from __future__ import annotations

import base64
import socket
import struct
import threading
import urllib.error
import urllib.request

import pytest

from dynamod.client import ClientError, NodeUnavailable, QuorumError
from dynamod.polling import wait_until

pytestmark = pytest.mark.integration


def test_put_on_one_node_reads_back_on_every_node(make_cluster):
    cluster = make_cluster()
    cluster.client("n1").put("greeting", b"hello")
    for node in cluster.ids:
        result = cluster.client(node).get("greeting")
        assert result.found and result.siblings == [b"hello"]


def test_blind_concurrent_puts_become_siblings_and_a_merged_put_resolves_them(make_cluster):
    cluster = make_cluster()
    cluster.client("n1").put("cart", b"apple")
    cluster.client("n2").put("cart", b"pear")
    read = cluster.client("n3").get("cart")
    assert sorted(read.siblings) == [b"apple", b"pear"]
    cluster.client("n3").put("cart", b"apple,pear", context=read.context)
    for node in cluster.ids:
        assert cluster.client(node).get("cart", r=3).siblings == [b"apple,pear"]


def test_reads_name_each_siblings_version_and_writes_name_their_dot(make_cluster):
    cluster = make_cluster()
    apple = cluster.client("n1").write("basket", b"apple")
    pear = cluster.client("n2").write("basket", b"pear")
    read = cluster.client("n3").get("basket")
    dots = {value: tuple(version["dot"]) for value, version in zip(read.siblings, read.versions, strict=True)}
    assert dots == {b"apple": apple.dot, b"pear": pear.dot}
    merged = cluster.client("n3").write("basket", b"apple,pear", context=read.context)
    [version] = cluster.client("n1").get("basket", r=3).versions
    assert tuple(version["dot"]) == merged.dot
    seen = {(actor, n) for actor, top in version["vector"].items() for n in range(1, top + 1)}
    seen |= {tuple(dot) for dot in version["cloud"]}
    assert {apple.dot, pear.dot, merged.dot} <= seen


def test_replicas_hold_the_same_versions(make_cluster):
    cluster = make_cluster()
    cluster.client("n1").put("k", b"v", w=3)
    copies = [cluster.client(node).replica("k") for node in cluster.ids]
    assert all(copy is not None for copy in copies)
    assert len({str(copy["siblings"]) for copy in copies}) == 1


def test_with_one_node_stopped_w2_succeeds_and_w3_r3_answer_503(make_cluster):
    cluster = make_cluster()
    cluster.stop("n3")
    client = cluster.client("n1")
    client.put("k", b"v", w=2)
    with pytest.raises(QuorumError) as failed_write:
        client.put("k", b"v2", w=3)
    assert failed_write.value.needed == 3 and failed_write.value.status == 503
    with pytest.raises(QuorumError) as failed_read:
        client.get("k", r=3)
    assert failed_read.value.needed == 3
    assert client.get("k", r=2).found


def test_a_restarted_node_serves_again(make_cluster):
    cluster = make_cluster()
    cluster.client("n1").put("k", b"before", w=3)
    cluster.stop("n2")
    with pytest.raises(NodeUnavailable):
        cluster.client("n2").get("k")
    cluster.start("n2")
    assert cluster.client("n2").get("k").siblings == [b"before"]

    def put_at_w3() -> bool:  # the others reconnect to it with backoff
        try:
            cluster.client("n1").put("k2", b"after", w=3)
        except QuorumError:
            return False
        return True

    assert wait_until(put_at_w3, 15, interval=0.2), "n2 never became reachable again"
    assert cluster.client("n2").replica("k2") is not None


def test_kill_9_of_every_node_loses_no_acknowledged_write(make_cluster):
    cluster = make_cluster()
    acknowledged: dict[str, bytes] = {}
    stop = threading.Event()
    lock = threading.Lock()

    def writer(node: str, worker: int) -> None:
        client = cluster.client(node, timeout=3)
        sequence = 0
        while not stop.is_set():
            key, value = f"w{worker}-{sequence}", b"value-%d-%d" % (worker, sequence)
            sequence += 1
            try:
                client.put(key, value)
            except (QuorumError, NodeUnavailable, ClientError):
                continue
            with lock:
                acknowledged[key] = value

    threads = [threading.Thread(target=writer, args=(cluster.ids[i % 3], i)) for i in range(6)]
    for thread in threads:
        thread.start()
    wait_until(lambda: len(acknowledged) >= 300, 20, interval=0.05)
    for node in cluster.ids:
        cluster.kill(node)
    stop.set()
    for thread in threads:
        thread.join()
    assert len(acknowledged) >= 100, "too few writes were acknowledged to make the test meaningful"
    for node in cluster.ids:
        cluster.start(node)
    reader = cluster.client("n1")
    missing = [key for key, value in acknowledged.items() if value not in reader.get(key, r=2).siblings]
    assert not missing, f"{len(missing)} acknowledged writes lost, e.g. {missing[:5]}"


def _http(method: str, url: str, data: bytes | None = None, headers: dict | None = None):
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


@pytest.mark.parametrize("method, path, body, headers, status", [
    ("PUT", "/kv/big", b"x" * (1024 * 1024 + 1), {}, 413),
    ("PUT", "/kv/", b"x", {}, 400),
    ("PUT", "/kv/" + "k" * 1025, b"x", {}, 400),
    ("PUT", "/kv/k", b"x", {"X-Context": "%%%not-base64"}, 400),
    ("PUT", "/kv/k", b"x", {"X-Context": "kQ"}, 400),
    ("PUT", "/kv/k?w=0", b"x", {}, 400),
    ("PUT", "/kv/k?w=4", b"x", {}, 400),
    ("GET", "/kv/k?r=abc", None, {}, 400),
    ("GET", "/kv/%FF%FE", None, {}, 400),
    ("GET", "/nowhere", None, {}, 404),
])
def test_bad_requests_get_json_errors(make_cluster, method, path, body, headers, status):
    cluster = make_cluster(nodes=1, n=1, r=1, w=1)
    base = f"http://{cluster.cluster.nodes[0].http}"
    code, payload = _http(method, base + path, body, headers)
    assert code == status
    import json

    assert "error" in json.loads(payload)
    assert cluster.client("n1").status()["node"] == "n1"


def test_a_value_of_exactly_one_mebibyte_is_accepted(make_cluster):
    cluster = make_cluster()
    value = bytes(range(256)) * 4096
    cluster.client("n1").put("big", value)
    assert cluster.client("n2").get("big").siblings == [value]


def test_garbage_on_the_peer_port_does_not_stop_the_node(make_cluster):
    cluster = make_cluster()
    host, port = cluster.cluster.node("n2").peer.split(":")
    for payload in (struct.pack("!I", 12) + b"\xc1" * 12, struct.pack("!I", 2**31) + b"xx", b"\x00\x00"):
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            sock.sendall(payload)
    cluster.client("n1").put("k", b"v", w=3)
    assert cluster.client("n2").get("k").siblings == [b"v"]


def test_a_node_stopped_with_sigterm_keeps_its_data(make_cluster):
    cluster = make_cluster(nodes=1, n=1, r=1, w=1)
    cluster.client("n1").put("k", b"v")
    cluster.stop("n1")
    cluster.start("n1")
    assert cluster.client("n1").get("k").siblings == [b"v"]


def test_chunked_bodies_are_capped_as_they_arrive(make_cluster):
    cluster = make_cluster(nodes=1, n=1, r=1, w=1)
    host, port = cluster.cluster.nodes[0].http.split(":")
    import http.client

    def chunked_put(size: int) -> int:
        connection = http.client.HTTPConnection(host, int(port), timeout=10)
        chunks = (b"x" * 65536 for _ in range(size // 65536))
        connection.request("PUT", "/kv/chunked", body=chunks, encode_chunked=True)
        status = connection.getresponse().status
        connection.close()
        return status

    assert chunked_put(4 * 65536) == 204
    assert chunked_put(20 * 65536) == 413
    assert cluster.client("n1").get("chunked").siblings == [b"x" * 4 * 65536]


def _statuses(cluster, observer: str) -> dict[str, str]:
    return {m["id"]: m["status"] for m in cluster.client(observer).status()["members"]}


def test_a_killed_node_is_marked_down_by_the_others_and_up_after_restart(make_cluster):
    cluster = make_cluster(heartbeat_interval=0.2)
    assert all(_statuses(cluster, node) == dict.fromkeys(cluster.ids, "up") for node in cluster.ids)
    cluster.kill("n3")
    assert wait_until(lambda: all(_statuses(cluster, node)["n3"] == "down" for node in ("n1", "n2")), 10,
                      interval=0.1), "n3 was never marked down"
    cluster.start("n3")  # waits until every running node sees every running member up
    assert all(_statuses(cluster, node)["n3"] == "up" for node in cluster.ids)


def test_a_write_with_an_owner_down_lands_on_a_fallback_and_reaches_the_owner_after_restart(make_cluster):
    from dynamod.core.ring import Ring

    cluster = make_cluster(nodes=4, partitions=32, heartbeat_interval=0.2, handoff_interval=0.3)
    ring = Ring.initial(cluster.ids, 32)
    key = b"hinted"
    owners = ring.preference_list(key, 3)
    fallback = next(node for node in ring.walk(0) if node not in owners)
    owner = owners[2]
    cluster.stop(owner)
    assert wait_until(lambda: _statuses(cluster, owners[0])[owner] == "down", 10, interval=0.05), \
        "the owner was never marked down"
    cluster.client(owners[0]).put(key, b"kept", w=3)  # two owners + the fallback
    held = cluster.client(fallback).replica(key)
    assert held is not None and base64.b64decode(held["siblings"][0]["value"]) == b"kept"
    cluster.start(owner)

    def handed_off() -> bool:
        return cluster.client(fallback).replica(key) is None and cluster.client(owner).replica(key) is not None

    assert wait_until(handed_off, 20, interval=0.1), "the hinted copy was never handed off"
    assert cluster.client(owner).get(key, r=3).siblings == [b"kept"]


@pytest.mark.parametrize("read_threads", [0, 2])
def test_a_wiped_node_is_restored_by_anti_entropy_without_reads(make_cluster, read_threads):
    import shutil

    cluster = make_cluster(partitions=16, heartbeat_interval=0.2, anti_entropy_interval=0.05,
                           read_threads=read_threads)
    client = cluster.client("n1")
    keys = [f"aae-{i}" for i in range(120)]
    for key in keys:
        client.put(key, key.encode(), w=3)
    incarnation = cluster.client("n3").status()["incarnation"]
    cluster.stop("n3")
    shutil.rmtree(cluster.cluster.node("n3").data_dir)
    cluster.start("n3")
    wiped = cluster.client("n3")
    assert wiped.status()["incarnation"] != incarnation
    missing = list(keys)

    def still_missing() -> list[str]:
        missing[:] = [key for key in missing if wiped.replica(key) is None]  # a restored key stays restored
        return missing

    assert not wait_until(still_missing, 60, interval=0.2, done=lambda left: not left), \
        f"{len(missing)} keys never restored, e.g. {missing[:3]}"
    def exchanged() -> int:
        return wiped.status()["anti_entropy"]["keys_received"] \
            + sum(cluster.client(node).status()["anti_entropy"]["keys_sent"] for node in ("n1", "n2"))

    # An exchange counts its keys when it ends: the last keys it sent are stored on n3 before that.
    counted = wait_until(exchanged, 10, interval=0.1, done=lambda count: count >= len(keys))
    assert counted >= len(keys)
    for node in cluster.ids:  # no quorum read ran anywhere: nothing could have read-repaired n3
        metrics = urllib.request.urlopen(f"http://{cluster.cluster.node(node).http}/metrics").read().decode()
        assert 'dynamod_requests_total{code="200",op="get"}' not in metrics
        assert 'op="replica"' in metrics or node != "n3"
