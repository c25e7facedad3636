"""The timeline: one self-contained HTML page of every op, per process column, escaped and bounded."""

from __future__ import annotations

import re

from dynacheck.checkers import timeline
from dynacheck.history import pairs

MS = 1_000_000
TEST = {"name": "cart-partition", "workload": "cart", "mode": "vclock", "nemesis": "partition", "concurrency": 2}


def op_pair(index: int, process, f: str, start_ms: float, end_ms: float | None, outcome: str = "ok", **fields):
    invoke = {"index": index, "time": int(start_ms * MS), "process": process, "type": "invoke", "f": f, **fields}
    if end_ms is None:
        return [invoke]
    return [invoke, {**invoke, "index": index + 1, "time": int(end_ms * MS), "type": outcome}]


def history():
    ops = (op_pair(0, 0, "add", 0, 5, key="k1", value="x1", node="n1")
           + op_pair(2, 1, "read", 1, 9, outcome="fail", key="k2", node="n2", error="503 quorum")
           + op_pair(4, 0, "add", 6, 30, outcome="info", key="k1", value="x2", node="n1", error="timeout")
           + op_pair(6, 2, "read", 31, 40, key="k1", node="n3")  # process 0's replacement (0 + concurrency)
           + op_pair(8, "nemesis", "start-partition", 10, 11, outcome="info", value={"n1": "isolated"})
           + op_pair(10, "nemesis", "stop-partition", 20, 21, outcome="info")
           + op_pair(12, 3, "add", 35, None, key="k9", value="x9"))
    return sorted(ops, key=lambda op: op["time"])


def test_writes_a_page_with_a_column_per_process_and_the_nemesis(tmp_path):
    result = timeline.check(TEST, history(), tmp_path)
    assert result == {"valid": True, "file": "timeline.html", "ops_shown": 7, "ops_total": 7}
    page = (tmp_path / "timeline.html").read_text(encoding="utf-8")
    assert 'id="col-nemesis"' in page and 'id="col-0"' in page and 'id="col-1"' in page
    # Process 2 took over process 0's worker thread after its info: same column, both named.
    assert 'id="col-2"' not in page and 'title="processes 0, 2">p0 +1<' in page
    assert "cart-partition" in page and "vclock" in page and "workload cart" in page


def test_boxes_are_coloured_by_outcome_and_carry_the_op_details(tmp_path):
    timeline.check(TEST, history(), tmp_path)
    page = (tmp_path / "timeline.html").read_text(encoding="utf-8")
    assert re.search(r'class="op ok"[^>]*title="add ok  process 0', page)
    assert re.search(r'class="op fail"[^>]*title="read fail[^"]*error: 503 quorum', page)
    assert re.search(r'class="op info"[^>]*title="add info[^"]*error: timeout', page)
    assert re.search(r'class="op info unfinished"[^>]*title="add info \(no completion\)[^"]*never completed', page)
    assert "latency 24.0 ms" in page and "node: n2" in page and "key: k9" in page
    assert 'class="fault"' in page and "partition: 0.011 s to 0.021 s" in page


def test_the_page_is_self_contained():
    page = timeline.render(TEST, list(pairs(history())), 7, [])
    assert "<script" not in page and "http://" not in page and "https://" not in page and "src=" not in page


def test_malicious_keys_and_values_are_escaped(tmp_path):
    evil = "<script>alert(1)</script>"
    ops = op_pair(0, 0, "add", 0, 5, key=evil, value='"><img src=x onerror=alert(2)>', node="<b>n1</b>")
    timeline.check({**TEST, "name": evil}, ops, tmp_path)
    page = (tmp_path / "timeline.html").read_text(encoding="utf-8")
    assert "<script>" not in page and "<img" not in page and "<b>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_long_values_are_truncated_in_titles(tmp_path):
    ops = op_pair(0, 0, "read", 0, 5, outcome="ok", key="k", value=list(range(5000)))
    timeline.check(TEST, ops, tmp_path)
    page = (tmp_path / "timeline.html").read_text(encoding="utf-8")
    assert "chars)" in page and len(page) < 20_000


def test_huge_histories_are_capped_and_the_page_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(timeline, "MAX_OPS", 50)
    ops = []
    for index in range(200):
        ops += op_pair(2 * index, index % 4, "add", index * 10, index * 10 + 5, key="k")
    result = timeline.check({**TEST, "concurrency": 4}, ops, tmp_path)
    assert result["ops_shown"] == 50 and result["ops_total"] == 200
    page = (tmp_path / "timeline.html").read_text(encoding="utf-8")
    assert page.count('class="op ') == 50
    assert "Only the first 50 of 200 operations are shown" in page


def test_convergence_polls_are_not_drawn_but_mentioned(tmp_path):
    polls = op_pair(0, "convergence", "replica", 50, 51, node="n1", value=[])
    result = timeline.check(TEST, history() + polls, tmp_path)
    assert result["ops_total"] == 7
    page = (tmp_path / "timeline.html").read_text(encoding="utf-8")
    assert "col-convergence" not in page and "1 convergence polls after the test are not shown" in page


def test_without_a_run_dir_only_counts():
    assert timeline.check(TEST, history(), None) == {"valid": True, "file": None, "ops_shown": 7, "ops_total": 7}


def test_an_empty_history_still_makes_a_page(tmp_path):
    assert timeline.check(TEST, [], tmp_path)["ops_total"] == 0
    assert "0 operations" in (tmp_path / "timeline.html").read_text(encoding="utf-8")
