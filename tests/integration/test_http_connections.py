"""The HTTP server over real sockets on a real node (issue 14): a complete request is answered
before the connection closes for garbage (however much follows) or a half-close; trickled heads
get 408; idle connections close; ``Expect: 100-continue`` is answered; HEAD carries no body; the
connection cap holds."""

from __future__ import annotations

import socket

import pytest

from dynamod.core.addresses import split_host_port
from dynamod.polling import wait_until

pytestmark = pytest.mark.integration

LIMITS = {"http_header_timeout": 1.0, "http_idle_timeout": 2.0, "http_max_connections": 40}


def dial(address: str) -> socket.socket:
    host, port = split_host_port(address)
    sock = socket.create_connection((host, port), timeout=10)
    return sock


def read_to_end(sock: socket.socket) -> bytes:
    """Everything the node sends until it closes (the socket timeout fails a node that never does)."""
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def status_lines(raw: bytes) -> list[bytes]:
    return [line for line in raw.split(b"\r\n") if line.startswith(b"HTTP/1.1 ")]


@pytest.fixture
def node(make_cluster):
    cluster = make_cluster(nodes=1, n=1, r=1, w=1, partitions=8, **LIMITS)
    return cluster.cluster.node("n1").http


def test_a_write_followed_by_garbage_is_answered_then_refused(node):
    sock = dial(node)
    sock.sendall(b"PUT /kv/k HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nwGARBAGE \x00\r\n\r\n")
    lines = status_lines(read_to_end(sock))
    assert lines == [b"HTTP/1.1 204 No Content", b"HTTP/1.1 400 Bad Request"]


def test_answers_survive_a_large_input_after_the_refusal(node):
    sock = dial(node)
    # The node refuses at the garbage, yet keeps reading (and dropping) the rest: a close with
    # unread input would reset the connection, and a reset can destroy the answers not yet read.
    sock.sendall(b"PUT /kv/g HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nw\x00" + b"\x00" * (4 << 20))
    assert status_lines(read_to_end(sock)) == [b"HTTP/1.1 204 No Content", b"HTTP/1.1 400 Bad Request"]


def test_a_half_closed_client_gets_every_answer(node):
    sock = dial(node)
    sock.sendall(b"PUT /kv/h HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi"
                 b"GET /kv/h HTTP/1.1\r\nHost: x\r\n\r\n")
    sock.shutdown(socket.SHUT_WR)
    raw = read_to_end(sock)
    assert status_lines(raw) == [b"HTTP/1.1 204 No Content", b"HTTP/1.1 200 OK"] and b"aGk=" in raw  # "hi"


def test_trickled_heads_get_408_and_idle_connections_close(node):
    slow = [dial(node) for _ in range(20)]
    for sock in slow:
        sock.sendall(b"GET /kv/k HTTP/1.1\r\nX-Slow: ")
    idle = dial(node)
    answers = [read_to_end(sock) for sock in slow]  # each ends: the node closed it
    assert all(status_lines(raw) == [b"HTTP/1.1 408 Request Timeout"] for raw in answers), answers[:2]
    assert read_to_end(idle) == b""


def test_expect_100_continue_is_answered_before_the_body_is_sent(node):
    sock = dial(node)
    sock.sendall(b"PUT /kv/e HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
    assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
    sock.sendall(b"body")
    assert sock.recv(1000).startswith(b"HTTP/1.1 204 ")
    sock.sendall(b"HEAD /kv/e HTTP/1.1\r\nHost: x\r\n\r\nGET /kv/e HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    head_answer, _, get_answer = read_to_end(sock).partition(b"\r\n\r\n")
    length = [line for line in head_answer.split(b"\r\n") if line.startswith(b"Content-Length: ")]
    assert get_answer.startswith(b"HTTP/1.1 200 OK")  # the HEAD answer had no body
    assert length and length[0] in get_answer


def test_connections_past_the_cap_get_503(node):
    held = [dial(node) for _ in range(LIMITS["http_max_connections"])]
    for sock in held:  # each is served, so each is counted before the next is opened
        sock.sendall(b"GET /admin/status HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
    refused = read_to_end(dial(node))
    assert status_lines(refused) == [b"HTTP/1.1 503 Service Unavailable"]
    for sock in held:
        sock.close()

    def serves() -> bool:
        sock = dial(node)
        sock.sendall(b"GET /admin/status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        return status_lines(read_to_end(sock)) == [b"HTTP/1.1 200 OK"]

    assert wait_until(serves, 10.0, interval=0.1), "the node serves again once connections close"
