"""A stand-in for a node's HTTP API in client tests (http.server on loopback, optionally TLS):
it answers a GET with an empty read (404) and a PUT with 204, and notes each request's method,
connection, client certificate URIs and Authorization header. ``close_after_answer`` closes the
connection after answering; ``drop_second`` closes it without an answer on a connection's second
request (a node that went away mid-request)."""

from __future__ import annotations

import json
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeNode(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: list[dict] = []
    close_after_answer = False
    drop_second = False

    @classmethod
    def reset(cls) -> None:
        cls.seen, cls.close_after_answer, cls.drop_second = [], False, False
        FakeNodeServer.closed = threading.Event()

    @classmethod
    def methods(cls) -> list[str]:
        """What was asked, in order (``GET dropped`` for a request closed without an answer)."""
        return [entry["method"] for entry in cls.seen]

    def setup(self) -> None:
        super().setup()
        self.served = 0

    def _answer(self, status: int, body: bytes) -> None:
        peer = self.connection.getpeercert() if isinstance(self.connection, ssl.SSLSocket) else None
        uris = [value for kind, value in (peer or {}).get("subjectAltName", ()) if kind == "URI"]
        self.served += 1
        dropped = self.drop_second and self.served == 2
        self.seen.append({"method": self.command + (" dropped" if dropped else ""),
                          "connection": self.client_address[1], "client": uris,
                          "authorization": self.headers.get("Authorization")})
        if dropped:
            self.close_connection = True
            return
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = self.close_after_answer

    def do_GET(self) -> None:  # noqa: N802 - the http.server name
        self._answer(404, json.dumps({"siblings": [], "context": ""}).encode())

    def do_PUT(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers["Content-Length"]))
        self._answer(204, b"")

    def log_message(self, *args: object) -> None:
        pass


class FakeNodeServer(ThreadingHTTPServer):
    """Notes when it has closed a connection."""

    closed = threading.Event()

    def shutdown_request(self, request: object) -> None:
        super().shutdown_request(request)
        self.closed.set()
