"""DynamoClient over kept-alive connections the node closed (a restart, an idle close): an idle
connection found closed is replaced before anything is sent on it; a request whose connection is
closed before any answer is sent again once if it is a read, never if it is a write (it may have
been applied)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from dynamod.client import DynamoClient, NodeUnavailable


class Node(BaseHTTPRequestHandler):
    """Answers keeping the connection alive; ``close_after_answer`` closes it after answering,
    ``drop_second`` closes it without an answer on a connection's second request."""

    protocol_version = "HTTP/1.1"
    requests: list[str] = []
    close_after_answer = False
    drop_second = False

    def setup(self) -> None:
        super().setup()
        self.served = 0

    def _serve(self, method: str, status: int, body: bytes) -> None:
        self.served += 1
        if self.drop_second and self.served == 2:
            self.requests.append(f"{method} dropped")
            self.close_connection = True
            return
        self.requests.append(method)
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = self.close_after_answer

    def do_GET(self) -> None:  # noqa: N802 - the http.server name
        self._serve("GET", 200, json.dumps({"siblings": [], "context": ""}).encode())

    def do_PUT(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers["Content-Length"]))
        self._serve("PUT", 204, b"")

    def log_message(self, *args: object) -> None:
        pass


class Server(ThreadingHTTPServer):
    """Notes when it has closed a connection."""

    closed = threading.Event()

    def shutdown_request(self, request: object) -> None:
        super().shutdown_request(request)
        self.closed.set()


@pytest.fixture
def node() -> Iterator[DynamoClient]:
    httpd = Server(("127.0.0.1", 0), Node)
    Server.closed = threading.Event()
    Node.requests, Node.close_after_answer, Node.drop_second = [], False, False
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    client = DynamoClient(f"127.0.0.1:{httpd.server_address[1]}", timeout=5)
    yield client
    client.close()
    httpd.shutdown()
    httpd.server_close()


def test_an_idle_connection_the_node_closed_is_replaced_before_a_write_is_sent(node):
    Node.close_after_answer = True
    node.write("k", b"v")
    assert Server.closed.wait(5)  # the node has closed the idle connection
    node.write("k", b"v")  # would have gone out on a closed connection and come back unknown
    assert Node.requests == ["PUT", "PUT"]


def test_a_read_whose_connection_closes_before_an_answer_is_sent_again_once(node):
    Node.drop_second = True
    assert node.get("k").siblings == []
    assert node.get("k").siblings == []
    assert Node.requests == ["GET", "GET dropped", "GET"]


def test_a_write_whose_connection_closes_before_an_answer_is_not_sent_again(node):
    Node.drop_second = True
    node.write("k", b"v")
    with pytest.raises(NodeUnavailable):
        node.write("k", b"v")
    assert Node.requests == ["PUT", "PUT dropped"]
