"""DynamoClient over kept-alive connections the node closed (a restart, an idle close): an idle
connection found closed is replaced before anything is sent on it; a request whose connection is
closed before any answer is sent again once if it is a read, never if it is a write (it may have
been applied)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from dynamod.client import DynamoClient, NodeUnavailable
from tests.fake_node import FakeNode, FakeNodeServer


@pytest.fixture
def node() -> Iterator[DynamoClient]:
    FakeNode.reset()
    httpd = FakeNodeServer(("127.0.0.1", 0), FakeNode)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    client = DynamoClient(f"127.0.0.1:{httpd.server_address[1]}", timeout=5)
    yield client
    client.close()
    httpd.shutdown()
    httpd.server_close()


def test_an_idle_connection_the_node_closed_is_replaced_before_a_write_is_sent(node):
    FakeNode.close_after_answer = True
    node.write("k", b"v")
    assert FakeNodeServer.closed.wait(5)  # the node has closed the idle connection
    node.write("k", b"v")  # would have gone out on a closed connection and come back unknown
    assert FakeNode.methods() == ["PUT", "PUT"]


def test_a_read_whose_connection_closes_before_an_answer_is_sent_again_once(node):
    FakeNode.drop_second = True
    assert node.get("k").siblings == []
    assert node.get("k").siblings == []
    assert FakeNode.methods() == ["GET", "GET dropped", "GET"]


def test_a_write_whose_connection_closes_before_an_answer_is_not_sent_again(node):
    FakeNode.drop_second = True
    node.write("k", b"v")
    with pytest.raises(NodeUnavailable):
        node.write("k", b"v")
    assert FakeNode.methods() == ["PUT", "PUT dropped"]
