"""Hostile-input costs of a node (issue 14): oversized peer frames, pipelined requests never read,
slow and endless request heads, a key grown by blind writes, and ``Expect: 100-continue``.

The script starts its own nodes from ``--tree`` (default: the repository it lives in): each node runs
``python -m dynamod`` with ``PYTHONPATH=TREE/daemon:TREE/ops`` and flags only (no config file), the
Berkeley DB engine with ``--sync`` unless ``--engine memory``, in a scratch directory under /tmp that
is deleted afterwards. It signals only the processes it started, by PID. It imports nothing from the
tree itself, so one copy measures any tree: a "before" tree is ``git archive HEAD | tar -x -C DIR``.

Cases (``--cases 1,3`` runs a subset):

1. one peer frame of 16, 32 and 64 MiB (a ``ping`` whose payload makes the msgpack body exactly that
   size; 64 MiB is the default ``max_frame_size``, which a body of exactly that length does not pass):
   seconds from the last byte sent to the answer frame (or the close), and the node's CPU seconds;
2. 100 pipelined GETs of a 1 MiB value that the client never reads: RSS growth after 5 s, and 3 s
   after the client resets the connection;
3. 200 slowloris connections (an unfinished header, one more byte a second): how many the node still
   keeps open after 15 s, and RSS growth; then one 16 MiB header line without CRLF: bytes sent
   before the node answered or closed, RSS growth, CPU seconds;
4. 60 blind 1 MiB PUTs to one key on a 3-node cluster (N=3, W=2): PUTs accepted, a GET's time, and
   whether every replica holds every accepted sibling within 60 s; when the tree has
   ``--max-key-size``, again with the bound raised to 64 MiB (and ``--max-frame-size`` 128 MiB);
5. a 4 KiB PUT with ``Expect: 100-continue`` (waiting up to 2 s for ``100 Continue`` before the
   body, as curl waits 1 s), against the same PUT without it, and ``curl -T`` when curl exists.

Usage: ``.venv/bin/python scripts/measure_hostile.py [--tree PATH] [--cases 1,2,3,4,5]
[--engine bdb|memory] [--json]`` (``--json`` prints one JSON document on stdout, the table on stderr).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import select
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack

MIB = 1024 * 1024
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
START_DEADLINE = 30.0
REPO = Path(__file__).resolve().parent.parent


class CaseFailed(Exception):
    """A case that could not be measured; the message says why."""


# -- the node's process --------------------------------------------------------------------------

def rss_mib(pid: int) -> float:
    """Resident set size (VmRSS) in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise CaseFailed(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds the process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


class RssSampler:
    """The peak RSS of a process while a case runs (sampled every 20 ms in a thread)."""

    def __init__(self, pid: int):
        self.pid = pid
        self.peak = rss_mib(pid)
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._halt.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._halt.wait(0.02):
            try:
                self.peak = max(self.peak, rss_mib(self.pid))
            except (OSError, CaseFailed):
                return


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


class Node:
    """One dynamod process this script started."""

    def __init__(self, node_id: str, directory: Path):
        self.id = node_id
        self.http = f"127.0.0.1:{free_port()}"
        self.peer = f"127.0.0.1:{free_port()}"
        self.directory = directory / node_id
        self.process: subprocess.Popen | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, tree: Path, members: list[Node], flags: list[str]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "dynamod", "--node-id", self.id, "--http", self.http, "--peer", self.peer,
                "--data-dir", str(self.directory / "data"), "--log-file", str(self.directory / "dynamod.log")]
        for member in members:
            argv += ["--member", f"{member.id}={member.peer},{member.http}"]
        with open(self.directory / "stderr.log", "ab") as sink:
            self.process = subprocess.Popen(argv + flags, stdin=subprocess.DEVNULL, stdout=sink, stderr=sink,
                                            cwd=str(self.directory), env=tree_environment(tree),
                                            start_new_session=True)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def status(self) -> dict[str, Any] | None:
        try:
            code, body = request(self.http, "GET", "/admin/status", timeout=1.0)
        except OSError:
            return None
        return json.loads(body) if code == 200 else None

    def stop(self) -> None:
        """SIGTERM, SIGKILL after 10 s; only this node's own PID."""
        if not self.alive():
            return
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)

    def log_tail(self, lines: int = 5) -> str:
        text = ""
        for name in ("stderr.log", "dynamod.log"):
            path = self.directory / name
            if path.exists():
                text += "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        return text


def tree_environment(tree: Path) -> dict[str, str]:
    environment = dict(os.environ)
    environment["PYTHONPATH"] = f"{tree / 'daemon'}:{tree / 'ops'}"
    return environment


def check_tree(tree: Path) -> tuple[str, bool]:
    """The dynamod the nodes will import (must be the tree's), and whether it has --max-key-size."""
    environment = tree_environment(tree)
    imported = subprocess.run([sys.executable, "-c", "import dynamod; print(dynamod.__file__)"], env=environment,
                              cwd="/tmp", capture_output=True, text=True, timeout=30, check=True).stdout.strip()
    if not Path(imported).resolve().is_relative_to((tree / "daemon").resolve()):
        raise SystemExit(f"the nodes would import {imported}, not the tree {tree}")
    usage = subprocess.run([sys.executable, "-m", "dynamod", "--help"], env=environment, cwd="/tmp",
                           capture_output=True, text=True, timeout=30).stdout
    return imported, "--max-key-size" in usage


class Cluster:
    """``count`` nodes started from ``tree``; ``with`` stops them and deletes their directory."""

    def __init__(self, tree: Path, count: int, flags: list[str]):
        self.directory = Path(tempfile.mkdtemp(prefix="dynamod-hostile-"))
        self.nodes = [Node(f"n{i}", self.directory) for i in range(1, count + 1)]
        self.tree = tree
        self.flags = flags

    def __enter__(self) -> Cluster:
        try:
            for node in self.nodes:
                node.start(self.tree, self.nodes, self.flags)
            self._wait_serving()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        for node in self.nodes:
            node.stop()
        shutil.rmtree(self.directory, ignore_errors=True)

    def _wait_serving(self) -> None:
        deadline = time.monotonic() + START_DEADLINE
        while time.monotonic() < deadline:
            for node in self.nodes:
                if not node.alive():
                    raise CaseFailed(f"{node.id} exited at start-up: {node.log_tail()}")
            statuses = [node.status() for node in self.nodes]
            if all(s is not None and all(m["status"] == "up" for m in s.get("members", [])) for s in statuses):
                return
            time.sleep(0.1)
        raise CaseFailed(f"cluster not serving within {START_DEADLINE:.0f}s")

    def answering(self) -> str:
        """"yes", or which nodes died or do not answer (after a case)."""
        problems = [f"{n.id} exited (rc {n.process.returncode})" if not n.alive() else f"{n.id} does not answer"
                    for n in self.nodes if not n.alive() or n.status() is None]
        return ", ".join(problems) or "yes"


def node_flags(engine: str, *, n: int, w: int, r: int, extra: list[str] | None = None) -> list[str]:
    flags = ["--n", str(n), "--r", str(r), "--w", str(w), "--partitions", "8", "--engine", engine]
    if engine == "bdb":
        flags.append("--sync")
    return flags + (extra or [])


# -- client side -----------------------------------------------------------------------------------

def request(address: str, method: str, path: str, body: bytes | None = None, timeout: float = 30.0,
            headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection(*split(address), timeout=timeout)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def read_http_response(sock: socket.socket, deadline: float) -> tuple[str, bytes]:
    """The status line and body of one HTTP response (Content-Length framed)."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += recv_some(sock, deadline)
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    length = next((int(line.split(":", 1)[1]) for line in lines[1:] if line.lower().startswith("content-length:")), 0)
    while len(body) < length:
        body += recv_some(sock, deadline)
    return lines[0], body


def recv_some(sock: socket.socket, deadline: float) -> bytes:
    left = deadline - time.monotonic()
    if left <= 0:
        raise CaseFailed("no answer before the deadline")
    sock.settimeout(left)
    try:
        chunk = sock.recv(MIB)
    except TimeoutError as exc:
        raise CaseFailed("no answer before the deadline") from exc
    if not chunk:
        raise CaseFailed("connection closed before a whole answer")
    return chunk


def readable(sock: socket.socket, wait: float = 0.0) -> bool:
    return bool(select.select([sock], [], [], wait)[0])


# -- case 1: peer frames ---------------------------------------------------------------------------

PING_OVERHEAD = len(msgpack.packb([0, 1, "ping", b"x" * 70000], use_bin_type=True)) - 70000  # bin32 header


def one_frame(node: Node, size: int, timeout: float) -> dict[str, Any]:
    body = msgpack.packb([0, 1, "ping", b"x" * (size - PING_OVERHEAD)], use_bin_type=True)
    assert len(body) == size
    frame = memoryview(struct.pack("!I", len(body)) + body)
    cpu_before, rss_before = cpu_seconds(node.pid), rss_mib(node.pid)
    deadline = time.monotonic() + timeout
    sent = 0
    with socket.create_connection(split(node.peer), timeout=timeout) as sock, RssSampler(node.pid) as sampler:
        started = time.monotonic()
        send_error = ""
        try:
            while sent < len(frame) and not readable(sock):
                sock.settimeout(max(0.01, deadline - time.monotonic()))
                sent += sock.send(frame[sent:sent + MIB])
        except OSError as exc:
            send_error = f"send failed after {sent} bytes ({exc}); "
        last_byte = time.monotonic()
        answer = b""
        try:
            while len(answer) < 4 or len(answer) < 4 + struct.unpack("!I", answer[:4])[0]:
                answer += recv_some(sock, deadline)
            message = msgpack.unpackb(answer[4:], raw=False)
            outcome = "answered" if message[0] == 1 else f"error frame: {message[2]}"
        except CaseFailed as exc:
            outcome = str(exc) if "closed" not in str(exc) else "closed by the node"
        except OSError as exc:
            outcome = f"connection error: {exc}"
        outcome = send_error + outcome
        answered = time.monotonic()
        cpu_after = cpu_seconds(node.pid)
    return {"size_mib": size / MIB, "outcome": outcome, "sent_bytes": sent, "send_s": round(last_byte - started, 3),
            "first_byte_to_answer_s": round(answered - started, 3),
            "answer_after_last_byte_s": round(answered - last_byte, 3),
            "node_cpu_s": round(cpu_after - cpu_before, 2),
            "rss_peak_growth_mib": round(sampler.peak - rss_before, 1)}


def case_frames(tree: Path, engine: str, timeout: float) -> dict[str, Any]:
    results = []
    with Cluster(tree, 1, node_flags(engine, n=1, w=1, r=1)) as cluster:
        node = cluster.nodes[0]
        for size in (16 * MIB, 32 * MIB, 64 * MIB):
            try:
                results.append(one_frame(node, size, timeout))
            except (CaseFailed, OSError) as exc:
                results.append({"size_mib": size / MIB, "outcome": f"failed: {exc}"})
        return {"frames": results, "node_answering_after": cluster.answering(),
                "note": "body exactly SIZE bytes; 64 MiB = default --max-frame-size (a body of that length passes)"}


# -- case 2: pipelined GETs never read -------------------------------------------------------------

def case_pipelining(tree: Path, engine: str) -> dict[str, Any]:
    with Cluster(tree, 1, node_flags(engine, n=1, w=1, r=1)) as cluster:
        node = cluster.nodes[0]
        code, body = request(node.http, "PUT", "/kv/pipelined", body=b"p" * MIB)
        if code != 204:
            raise CaseFailed(f"PUT of the 1 MiB value answered {code}: {body[:200]!r}")
        time.sleep(0.5)
        before = rss_mib(node.pid)
        with RssSampler(node.pid) as sampler:
            sock = socket.create_connection(split(node.http), timeout=10)
            sock.sendall(b"GET /kv/pipelined HTTP/1.1\r\nHost: a\r\n\r\n" * 100)
            time.sleep(5)
            unread = rss_mib(node.pid)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()  # RST
            time.sleep(3)
            after_reset = rss_mib(node.pid)
        return {"rss_before_mib": round(before, 1), "growth_after_5s_mib": round(unread - before, 1),
                "peak_growth_mib": round(sampler.peak - before, 1),
                "growth_3s_after_reset_mib": round(after_reset - before, 1),
                "node_answering_after": cluster.answering()}


# -- case 3: slowloris and an endless header line --------------------------------------------------

SLOW_HEAD = b"GET /kv/x HTTP/1.1\r\nHost: a\r\nX-a: "


def slowloris(node: Node, connections: int, seconds: int) -> dict[str, Any]:
    before = rss_mib(node.pid)
    open_socks: list[socket.socket] = []
    refused = Counter()
    for _ in range(connections):
        try:
            sock = socket.create_connection(split(node.http), timeout=5)
            sock.sendall(SLOW_HEAD)
            open_socks.append(sock)
        except OSError as exc:
            refused[type(exc).__name__] += 1
    ended = Counter()
    started = time.monotonic()
    try:
        for tick in range(1, seconds + 1):
            time.sleep(max(0.0, started + tick - time.monotonic()))
            still = []
            for sock in open_socks:
                how = slow_step(sock)
                if how is None:
                    still.append(sock)
                else:
                    ended[how] += 1
                    sock.close()
            open_socks = still
        growth = rss_mib(node.pid) - before
    finally:
        for sock in open_socks:
            sock.close()
    return {"connections": connections, "connect_failed": dict(refused), "after_s": seconds,
            "still_open": len(open_socks), "ended_by_node": dict(ended), "rss_growth_mib": round(growth, 1)}


def slow_step(sock: socket.socket) -> str | None:
    """One more header byte; how the node ended the connection, or None while it is open."""
    try:
        if readable(sock):
            data = sock.recv(4096)
            return "closed" if not data else "answered " + data.split(b"\r\n", 1)[0].decode("latin-1")
        sock.send(b"a")
    except OSError as exc:
        return f"reset ({type(exc).__name__})"
    return None


def endless_header(node: Node, size: int, wait_after: float) -> dict[str, Any]:
    cpu_before, rss_before = cpu_seconds(node.pid), rss_mib(node.pid)
    chunk = b"a" * (64 * 1024)
    sent = 0
    answer = "none"
    with socket.create_connection(split(node.http), timeout=10) as sock, RssSampler(node.pid) as sampler:
        started = time.monotonic()
        try:
            sock.sendall(SLOW_HEAD)
            while sent < size and not readable(sock):
                sock.sendall(chunk)
                sent += len(chunk)
            sending = time.monotonic() - started
            if readable(sock, wait_after):
                data = sock.recv(4096)
                answer = "closed" if not data else data.split(b"\r\n", 1)[0].decode("latin-1")
            else:
                answer = f"no answer {wait_after:.0f}s after the last byte"
        except OSError as exc:
            sending = time.monotonic() - started
            answer = f"reset ({type(exc).__name__})"
        rss_after = rss_mib(node.pid)
        cpu_after = cpu_seconds(node.pid)
    return {"header_bytes_sent_before_answer": sent, "answer": answer, "send_s": round(sending, 2),
            "rss_growth_mib": round(rss_after - rss_before, 1),
            "rss_peak_growth_mib": round(sampler.peak - rss_before, 1),
            "node_cpu_s": round(cpu_after - cpu_before, 2)}


def case_slow_heads(tree: Path, engine: str) -> dict[str, Any]:
    with Cluster(tree, 1, node_flags(engine, n=1, w=1, r=1)) as cluster:
        node = cluster.nodes[0]
        result: dict[str, Any] = {}
        for name, measure in (("slowloris", lambda: slowloris(node, 200, 15)),
                              ("header_16mib", lambda: endless_header(node, 16 * MIB, 5.0))):
            try:
                result[name] = measure()
            except (CaseFailed, OSError) as exc:
                result[name] = {"failed": str(exc)}
        result["node_answering_after"] = cluster.answering()
        return result


# -- case 4: a key grown by blind writes -----------------------------------------------------------

def case_siblings(tree: Path, engine: str, extra: list[str], puts: int = 60, converge_s: float = 60.0,
                  budget_s: float = 120.0) -> dict[str, Any]:
    with Cluster(tree, 3, node_flags(engine, n=3, w=2, r=2, extra=extra)) as cluster:
        coordinator = cluster.nodes[0]
        codes: Counter = Counter()
        put_times = []
        deadline = time.monotonic() + budget_s
        for i in range(puts):
            if time.monotonic() > deadline:
                codes["not sent (budget)"] += puts - i
                break
            value = b"%04d" % i + b"v" * (MIB - 4)
            started = time.monotonic()
            try:
                code, _ = request(coordinator.http, "PUT", "/kv/siblings", body=value, timeout=30)
            except OSError as exc:
                code = f"error: {exc}"
            put_times.append(time.monotonic() - started)
            codes[str(code)] += 1
        accepted = codes.get("204", 0)
        started = time.monotonic()
        try:
            code, body = request(coordinator.http, "GET", "/kv/siblings", timeout=60)
            siblings = len(json.loads(body).get("siblings", [])) if code in (200, 404) else None
            got = {"status": code, "siblings": siblings,
                   "error": None if code == 200 else body[:200].decode(errors="replace")}
        except (OSError, ValueError) as exc:
            got = {"status": None, "error": str(exc)}
        got["seconds"] = round(time.monotonic() - started, 2)
        counts, converged_after = replica_counts(cluster, accepted, converge_s)
        return {"flags": extra, "puts": puts, "codes": dict(codes), "accepted": accepted,
                "put_s_median": round(statistics.median(put_times), 3) if put_times else None,
                "put_s_max": round(max(put_times), 3) if put_times else None,
                "puts_total_s": round(sum(put_times), 1), "get": got,
                "replica_siblings": counts, "converged_after_s": converged_after,
                "rss_mib": {n.id: round(rss_mib(n.pid), 1) for n in cluster.nodes if n.alive()},
                "nodes_answering_after": cluster.answering()}


def replica_counts(cluster: Cluster, expected: int, seconds: float) -> tuple[dict[str, Any], float | None]:
    """Each node's local sibling count for the key, polled until all hold the same count, at least
    ``expected`` (a refused write may still have left siblings behind), or ``seconds`` pass."""
    started = time.monotonic()
    counts: dict[str, Any] = {}
    while True:
        for node in cluster.nodes:
            try:
                left = seconds - (time.monotonic() - started)
                code, body = request(node.http, "GET", "/admin/replica/siblings", timeout=max(5.0, left))
                counts[node.id] = len(json.loads(body)["siblings"]) if code in (200, 404) else f"status {code}"
            except (OSError, ValueError, KeyError) as exc:
                counts[node.id] = f"error: {exc}"
        elapsed = time.monotonic() - started
        numbers = set(counts.values())
        if len(numbers) == 1 and all(isinstance(count, int) and count >= expected for count in numbers):
            return counts, round(elapsed, 1)
        if elapsed > seconds:
            return counts, None
        time.sleep(2)


def case_key_size(tree: Path, engine: str, has_max_key_size: bool) -> dict[str, Any]:
    runs = {}
    flag_sets = [("default", [])]
    if has_max_key_size:
        flag_sets.append(("raised", ["--max-key-size", str(64 * MIB), "--max-frame-size", str(128 * MIB)]))
    for name, extra in flag_sets:
        try:
            runs[name] = case_siblings(tree, engine, extra)
        except (CaseFailed, OSError) as exc:
            runs[name] = {"failed": str(exc)}
    return runs


# -- case 5: Expect: 100-continue ------------------------------------------------------------------

def expect_put(node: Node, body: bytes, expect: bool, wait: float = 2.0) -> tuple[float, bool, str]:
    """One PUT on a fresh connection: (seconds, whether 100 Continue came, final status line)."""
    head = (f"PUT /kv/expect HTTP/1.1\r\nHost: a\r\nContent-Length: {len(body)}\r\n"
            + ("Expect: 100-continue\r\n" if expect else "") + "\r\n").encode()
    with socket.create_connection(split(node.http), timeout=10) as sock:
        started = time.monotonic()
        sock.sendall(head)
        continued = False
        early = b""
        if expect and readable(sock, wait):
            early = sock.recv(4096)
            continued = early.startswith(b"HTTP/1.1 100")
        if early and not continued:
            return time.monotonic() - started, False, early.split(b"\r\n", 1)[0].decode("latin-1")
        sock.sendall(body)
        if continued:
            early = early.partition(b"\r\n\r\n")[2]
        status, _ = read_http_response(sock, time.monotonic() + 10) if not early else parse_buffered(sock, early)
        return time.monotonic() - started, continued, status


def parse_buffered(sock: socket.socket, data: bytes) -> tuple[str, bytes]:
    """A response of which ``data`` already arrived."""
    while b"\r\n\r\n" not in data:
        data += recv_some(sock, time.monotonic() + 10)
    return data.split(b"\r\n", 1)[0].decode("latin-1"), b""


def curl_put(node: Node, path: Path) -> float | str:
    if not shutil.which("curl"):
        return "no curl"
    started = time.monotonic()
    done = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-T", str(path),
                           f"http://{node.http}/kv/curl"], capture_output=True, text=True, timeout=20)
    took = time.monotonic() - started
    return round(took, 3) if done.stdout == "204" else f"status {done.stdout} {done.stderr[:100]}"


def case_expect(tree: Path, engine: str, repeats: int = 3) -> dict[str, Any]:
    body = b"e" * 4096
    with Cluster(tree, 1, node_flags(engine, n=1, w=1, r=1)) as cluster:
        node = cluster.nodes[0]
        result: dict[str, Any] = {}
        for name, expect in (("with_expect", True), ("without_expect", False)):
            runs = [expect_put(node, body, expect) for _ in range(repeats)]
            result[name] = {"s_median": round(statistics.median(r[0] for r in runs), 3),
                            "got_100_continue": sum(r[1] for r in runs), "of": repeats,
                            "final": sorted({r[2] for r in runs})}
        upload = cluster.directory / "upload.bin"
        upload.write_bytes(body)
        result["curl_T_s"] = [curl_put(node, upload) for _ in range(repeats)]
        result["node_answering_after"] = cluster.answering()
        return result


# -- report ----------------------------------------------------------------------------------------

def table(results: dict[str, Any]) -> str:
    lines = [f"tree {results['tree']} (dynamod {results['imported']}), engine {results['engine']}, "
             f"--max-key-size supported: {results['has_max_key_size']}"]
    one = results.get("1_peer_frames")
    if one:
        lines.append("\n1. peer frame (ping with payload): outcome / send s / answer after last byte s / "
                     "first byte to answer s / node CPU s / peak RSS +MiB")
        for row in one.get("frames", []):
            lines.append(f"   {row['size_mib']:>4.0f} MiB: {row.get('outcome')} / {row.get('send_s')} / "
                         f"{row.get('answer_after_last_byte_s')} / {row.get('first_byte_to_answer_s')} / "
                         f"{row.get('node_cpu_s')} / "
                         f"{row.get('rss_peak_growth_mib')}")
        lines.append(f"   node answering after: {one.get('node_answering_after', one.get('failed'))}")
    two = results.get("2_pipelining")
    if two:
        lines.append("\n2. 100 pipelined GETs of 1 MiB, never read")
        lines.append("   " + ", ".join(f"{k}={v}" for k, v in two.items()))
    three = results.get("3_slow_heads")
    if three:
        lines.append("\n3. slow request heads")
        for name in ("slowloris", "header_16mib", "failed", "node_answering_after"):
            if name in three:
                value = three[name]
                lines.append(f"   {name}: " + (", ".join(f"{k}={v}" for k, v in value.items())
                                                 if isinstance(value, dict) else str(value)))
    four = results.get("4_key_size")
    if four:
        lines.append("\n4. 60 blind 1 MiB PUTs to one key, 3 nodes N=3 W=2")
        for name, run in four.items():
            lines.append(f"   {name}: " + (", ".join(f"{k}={v}" for k, v in run.items()) if isinstance(run, dict)
                                            else str(run)))
    five = results.get("5_expect")
    if five:
        lines.append("\n5. 4 KiB PUT, Expect: 100-continue (client waits up to 2 s for 100 Continue)")
        for name, value in five.items():
            lines.append(f"   {name}: {value}")
    return "\n".join(lines)


def run_case(name: str, measure: Callable[[], dict[str, Any]], deadline_s: float) -> dict[str, Any]:
    """One case; a failure (or passing its deadline) is recorded with its reason."""
    started = time.monotonic()
    try:
        result = measure()
    except (CaseFailed, OSError, ValueError, subprocess.SubprocessError) as exc:
        result = {"failed": f"{type(exc).__name__}: {exc}"}
    took = time.monotonic() - started
    result["case_s"] = round(took, 1)
    if took > deadline_s:
        result["over_deadline"] = f"took {took:.0f}s, budget {deadline_s:.0f}s"
    print(f"[{name}] done in {took:.1f}s", file=sys.stderr)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", type=Path, default=REPO, help="repository tree whose daemon/ the nodes run")
    parser.add_argument("--cases", default="1,2,3,4,5")
    parser.add_argument("--engine", choices=("bdb", "memory"), default="bdb")
    parser.add_argument("--frame-timeout", type=float, default=60.0, help="seconds per peer-frame case")
    parser.add_argument("--json", action="store_true", help="JSON on stdout, the table on stderr")
    args = parser.parse_args()
    tree = args.tree.resolve()
    imported, has_max_key_size = check_tree(tree)
    wanted = set(args.cases.split(","))
    results: dict[str, Any] = {"tree": str(tree), "imported": imported, "engine": args.engine,
                               "has_max_key_size": has_max_key_size}
    cases = [("1", "1_peer_frames", lambda: case_frames(tree, args.engine, args.frame_timeout),
              3 * args.frame_timeout + 30),
             ("2", "2_pipelining", lambda: case_pipelining(tree, args.engine), 40),
             ("3", "3_slow_heads", lambda: case_slow_heads(tree, args.engine), 60),
             ("4", "4_key_size", lambda: case_key_size(tree, args.engine, has_max_key_size), 400),
             ("5", "5_expect", lambda: case_expect(tree, args.engine), 60)]
    for number, name, measure, deadline_s in cases:
        if number in wanted:
            results[name] = run_case(name, measure, deadline_s)
    report = table(results)
    if args.json:
        print(report, file=sys.stderr)
        print(json.dumps(results, indent=2, default=str))
    else:
        print(report)


if __name__ == "__main__":
    main()
