"""The store layout and ``dynacheck serve``'s pages: runs listed with verdicts, run pages, no escape.

Pages are fetched through the real twisted.web stack over a ``StringTransport`` (no socket, no
global reactor); static files through ``DummyRequest``, which pumps their pull producer.
"""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.web.resource import getChildForRequest
from twisted.web.test.requesthelper import DummyRequest

from dynacheck import store, web
from dynacheck.history import write_history

WHEN = datetime(2024, 1, 2, 3, 4, 5)
PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 16


def make_run(root: Path, name: str = "cart-partition", when: datetime = WHEN, valid=True, results: bool = True):
    run_dir = store.new_run_dir(root, name, when)
    store.save_json(run_dir / "test.json", {"name": name, "workload": "cart", "mode": "vclock"})
    write_history(run_dir / "history.jsonl", [{"index": 0, "time": 0, "process": 0, "type": "invoke", "f": "add"}])
    if results:
        store.save_json(run_dir / "results.json", {"valid": valid, "checkers": {
            "siblings": {"valid": valid, "lost": [1, 2, 3], "reads": 40},
            "perf": {"valid": "unknown", "error": "ValueError: <boom>"}}})
    return run_dir


def get(site, path: bytes) -> tuple[int, dict[bytes, bytes], str]:
    """One HTTP/1.0 GET through the site's protocol; returns status, headers, body."""
    protocol = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(b"GET " + path + b" HTTP/1.0\r\nHost: localhost\r\n\r\n")
    head, _, body = transport.value().partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    headers = {name.lower(): value for name, value in (line.split(b": ", 1) for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body.decode("utf-8")


def get_file(site, path: bytes) -> tuple[int, dict[bytes, list[bytes]], bytes]:
    """A static file of the store (DummyRequest drives the file producer synchronously)."""
    request = DummyRequest(path.lstrip(b"/").split(b"/"))
    request.path = path
    request.render(getChildForRequest(site.resource, request))
    headers = {name.lower(): values for name, values in request.responseHeaders.getAllRawHeaders()}
    return request.responseCode or 200, headers, b"".join(request.written)


@pytest.fixture
def root(tmp_path):
    return tmp_path / "store"


@pytest.fixture
def site(root):
    return web.make_site(root, reactor=MemoryReactorClock())


# --- store layout -------------------------------------------------------------------------------

def test_new_run_dir_is_named_by_test_and_start_time(root):
    run_dir = store.new_run_dir(root, "cart-partition", WHEN)
    assert run_dir == root / "cart-partition" / "20240102T030405" and run_dir.is_dir()


def test_runs_started_in_the_same_second_get_a_suffix(root):
    names = [store.new_run_dir(root, "t", WHEN).name for _ in range(3)]
    assert names == ["20240102T030405", "20240102T030405-2", "20240102T030405-3"]


def test_test_names_cannot_leave_the_store(root):
    run_dir = store.new_run_dir(root, "../../etc/x y", WHEN)
    assert run_dir.parent.parent == root and run_dir.parent.name == "etc-x-y"


def test_latest_is_a_relative_link_to_the_newest_run(root):
    first = make_run(root, when=WHEN)
    store.update_latest(root, first)
    second = make_run(root, "register", datetime(2024, 1, 3))
    store.update_latest(root, second)
    link = root / "latest"
    assert link.is_symlink() and not os.readlink(link).startswith("/")
    assert link.resolve() == second.resolve()
    assert not [entry for entry in root.iterdir() if entry.name.startswith(".")]  # no temporary link left


def test_list_runs_is_newest_first_with_verdicts_and_incomplete_runs(root):
    make_run(root, "a", datetime(2024, 1, 1), valid=True)
    make_run(root, "b", datetime(2024, 1, 2), valid=False)
    make_run(root, "c", datetime(2024, 1, 3), results=False)
    broken = make_run(root, "d", datetime(2024, 1, 4))
    (broken / "results.json").write_text("{not json")
    store.update_latest(root, broken)
    runs = store.list_runs(root)
    assert [(run.test_name, run.valid) for run in runs] == [("d", "unknown"), ("c", "incomplete"),
                                                            ("b", False), ("a", True)]
    assert runs[0].timestamp == "20240104T000000" and runs[0].path == broken


def test_list_runs_of_a_missing_store_is_empty(root):
    assert store.list_runs(root) == []


def test_load_run_reads_test_history_and_results(root):
    run_dir = make_run(root, results=False)
    test, history, results = store.load_run(run_dir)
    assert test["workload"] == "cart" and history[0]["f"] == "add" and results is None
    store.save_json(run_dir / "results.json", {"valid": True})
    assert store.load_run(run_dir)[2] == {"valid": True}


def test_save_json_replaces_atomically_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "results.json"
    store.save_json(path, {"valid": False})
    store.save_json(path, {"valid": True, "note": "<ok>"})
    assert json.loads(path.read_text()) == {"valid": True, "note": "<ok>"}
    assert [entry.name for entry in tmp_path.iterdir()] == ["results.json"]
    with pytest.raises(TypeError):
        store.save_json(path, {"bad": object()})
    assert json.loads(path.read_text())["valid"] is True
    assert [entry.name for entry in tmp_path.iterdir()] == ["results.json"]


# --- web pages ----------------------------------------------------------------------------------

def test_index_lists_every_run_with_its_verdict(root, site):
    make_run(root, "cart-partition", valid=False)
    make_run(root, "register", datetime(2024, 2, 1), results=False)
    status, headers, body = get(site, b"/")
    assert status == 200 and headers[b"content-type"].startswith(b"text/html")
    assert '<a href="/cart-partition/20240102T030405/">' in body
    assert '<span class="verdict invalid">invalid</span>' in body
    assert '<span class="verdict incomplete">incomplete</span>' in body
    assert "2024-01-02 03:04:05" in body


def test_a_missing_store_shows_an_empty_index_with_a_hint(root, site):
    status, _, body = get(site, b"/")
    assert status == 200 and "does not exist yet" in body and "dynacheck run" in body


def test_run_page_shows_verdict_checkers_options_plots_and_links(root, site):
    run_dir = make_run(root, valid=True)
    for name in ("latency-raw.png", "rate.png"):
        (run_dir / name).write_bytes(PNG)
    (run_dir / "timeline.html").write_text("<html></html>")
    (run_dir / "graphs").mkdir()
    (run_dir / "graphs" / "causality.png").write_bytes(PNG)
    (run_dir / "nodes" / "n1").mkdir(parents=True)
    (run_dir / "nodes" / "n1" / "dynamod.log").write_text("{}\n")
    status, _, body = get(site, b"/cart-partition/20240102T030405/")
    assert status == 200
    assert '<span class="verdict valid">valid</span>' in body
    assert "<td>siblings</td>" in body and "lost: 3, reads: 40" in body
    assert "ValueError: &lt;boom&gt;" in body  # a crashed checker's error, escaped
    assert "<td>workload</td><td>cart</td>" in body
    for src in ("latency-raw.png", "rate.png", "graphs/causality.png"):
        assert f'<img src="{src}"' in body
    for href in ("timeline.html", "history.jsonl", "results.json", "nodes/n1/dynamod.log"):
        assert f'<a href="{href}">' in body


def test_run_page_without_a_slash_redirects_so_relative_links_work(root, site):
    make_run(root)
    status, headers, _ = get(site, b"/cart-partition/20240102T030405")
    assert status == 302 and headers[b"location"] == b"/cart-partition/20240102T030405/"


def test_an_incomplete_run_says_so(root, site):
    make_run(root, results=False)
    _, _, body = get(site, b"/cart-partition/20240102T030405/")
    assert "incomplete" in body and "dynacheck analyze" in body


def test_latest_redirects_to_the_newest_run_and_its_files(root, site):
    store.update_latest(root, make_run(root))
    status, headers, _ = get(site, b"/latest")
    assert status == 302 and headers[b"location"] == b"/cart-partition/20240102T030405/"
    status, headers, _ = get(site, b"/latest/timeline.html")
    assert status == 302 and headers[b"location"] == b"/cart-partition/20240102T030405/timeline.html"


def test_latest_pointing_outside_the_store_is_not_followed(root, site, tmp_path):
    make_run(root)
    (root / "latest").symlink_to(tmp_path)
    assert get(site, b"/latest")[0] == 404


def test_checker_summaries_show_counts_not_evidence():
    summary = web.summarise({"valid": False, "lost": [1, 2], "reads": 40, "rates": {"add": 12.5},
                             "latencies": {"add": {"ok": {"count": 3}}}, "trace": "x" * 500})
    assert summary == "lost: 2, reads: 40, rates: add=12.5"


def test_run_files_are_served_with_safe_types(root, site):
    run_dir = make_run(root)
    (run_dir / "latency-raw.png").write_bytes(PNG)
    status, headers, body = get_file(site, b"/cart-partition/20240102T030405/history.jsonl")
    assert status == 200 and body.startswith(b'{"index":0')
    # A history value like "<script>" must never be rendered as HTML by the browser.
    assert headers[b"content-type"] == [b"text/plain; charset=utf-8"]
    assert headers[b"x-content-type-options"] == [b"nosniff"]
    assert get_file(site, b"/cart-partition/20240102T030405/latency-raw.png")[2] == PNG


def test_html_in_test_options_and_names_is_escaped(root, site):
    run_dir = make_run(root)
    store.save_json(run_dir / "test.json", {"name": "<script>alert(1)</script>", "<b>": "<i>"})
    _, _, body = get(site, b"/cart-partition/20240102T030405/")
    assert "<script>alert" not in body and "<b>" not in body and "<i>" not in body
    assert "&lt;script&gt;" in body


@pytest.mark.parametrize("path", [
    b"/../../etc/passwd",
    b"/cart-partition/../../etc/passwd",
    b"/cart-partition/20240102T030405/../../../etc/passwd",
    b"/cart-partition/20240102T030405/..%2F..%2F..%2F..%2Fetc%2Fpasswd",
    b"/cart-partition/20240102T030405/%2Fetc%2Fpasswd",
    b"/cart-partition/20240102T030405/.results.json.tmp",
    b"/%2e%2e/%2e%2e/etc/passwd",
])
def test_path_traversal_is_refused(root, site, path):
    run_dir = make_run(root)
    (run_dir / ".results.json.tmp").write_text("half written")
    status, _, body = get(site, path)
    assert status in (403, 404) and "root:" not in body and "half written" not in body


def test_symlinks_out_of_the_store_are_not_followed(root, site, tmp_path):
    run_dir = make_run(root)
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "key.txt").write_text("top secret")
    (run_dir / "nodes").mkdir()
    (run_dir / "nodes" / "escape").symlink_to(secret)
    (run_dir / "outside.txt").symlink_to(secret / "key.txt")
    (root / "linked-test").symlink_to(secret)
    for path in (b"/cart-partition/20240102T030405/nodes/escape/key.txt",
                 b"/cart-partition/20240102T030405/outside.txt"):
        status, _, body = get_file(site, path)
        assert status in (403, 404) and b"top secret" not in body
    assert get(site, b"/linked-test/")[0] == 404
    assert "linked-test" not in get(site, b"/")[2]


def test_unknown_tests_and_runs_are_not_found(root, site):
    make_run(root)
    assert get(site, b"/no-such-test/")[0] == 404
    assert get(site, b"/cart-partition/20990101T000000/")[0] == 404
    assert get(site, b"/cart-partition/not-a-run/")[0] == 404
