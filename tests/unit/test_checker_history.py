"""Loading history.jsonl (msgspec, with the json module for what it refuses) and the shared HistoryIndex."""

from __future__ import annotations

import json
import math

import pytest

from dynacheck.checkers import CHECKERS, check_all
from dynacheck.history import CONVERGENCE, NEMESIS, HistoryIndex, is_client, pairs, read_history, write_history
from dynacheck.synthetic import generate

ODD_OPS = [
    {"index": 0, "time": 1, "type": "invoke", "process": 0, "f": "add", "value": 12345678901234567890123},
    {"index": 1, "time": 2, "type": "ok", "process": 0, "f": "add", "value": -(2**70), "error": "café ☕"},
    {"index": 2, "time": 3, "type": "info", "process": "nemesis", "f": "start-clock", "value": {"offset": 1.5e-7}},
    {"index": 3, "time": 4, "type": "ok", "process": 1, "f": "read", "value": [0.1, -0.0, 1e300, None, True]},
    {"index": 4, "time": 5, "type": "fail", "process": 2, "f": "add", "error": "lone \ud800 surrogate"},
]


def test_a_history_reads_back_as_the_json_module_wrote_it(tmp_path):
    path = tmp_path / "history.jsonl"
    write_history(path, ODD_OPS)
    assert read_history(path) == ODD_OPS
    assert type(read_history(path)[0]["value"]) is int  # beyond 64 bits, still an exact int


def test_what_only_the_json_module_writes_still_reads(tmp_path):
    path = tmp_path / "history.jsonl"
    write_history(path, [{"time": 1, "type": "ok", "value": [math.nan, math.inf, -math.inf]}])
    value = read_history(path)[0]["value"]
    assert math.isnan(value[0]) and value[1:] == [math.inf, -math.inf]


def test_blank_lines_are_skipped(tmp_path):
    path = tmp_path / "history.jsonl"
    path.write_text('{"a": 1}\n\n   \n{"b": 2}\r\n', encoding="utf-8")
    assert read_history(path) == [{"a": 1}, {"b": 2}]


def test_a_torn_last_line_is_ignored(tmp_path):
    path = tmp_path / "history.jsonl"
    path.write_text('{"a": 1}\n{"b": 2}\n{"c": [1, 2', encoding="utf-8")
    assert read_history(path) == [{"a": 1}, {"b": 2}]
    path.write_text('{"a": 1}\n{"c": [1, 2\n', encoding="utf-8")
    assert read_history(path) == [{"a": 1}]


def test_an_undecodable_line_before_the_end_is_an_error_naming_it(tmp_path):
    path = tmp_path / "history.jsonl"
    path.write_text('{"a": 1}\n{"c": [1, 2\n{"b": 2}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"history.jsonl:2: not a JSON op"):
        read_history(path)
    path.write_text('{"a": 1}\n{"c": [1, 2\n\n', encoding="utf-8")  # a blank line after it: not the last line
    with pytest.raises(ValueError, match=r"history.jsonl:2: not a JSON op"):
        read_history(path)


def test_the_index_pairs_as_pairs_does_and_client_pairs_as_pairing_client_ops_alone():
    _, history = generate(400, seed=2)
    index = HistoryIndex(history)
    assert index.pairs == list(pairs(history))
    assert index.client_pairs == list(pairs(op for op in history if is_client(op)))
    assert index.ops_of(NEMESIS) == [op for op in history if op.get("process") == NEMESIS]
    assert index.ops_of(CONVERGENCE) == [op for op in history if op.get("process") == CONVERGENCE]
    assert index.end == max(op.get("time", 0) for op in history)
    assert HistoryIndex([]).end == 0


def test_the_index_computes_a_memo_once_and_release_drops_everything():
    _, history = generate(200, seed=3)
    index = HistoryIndex(history)
    calls = []
    assert index.memo("thing", lambda: calls.append(1) or "value") == "value"
    assert index.memo("thing", lambda: calls.append(1) or "other") == "value"
    assert calls == [1]
    before = index.pairs
    index.release()
    assert index.memo("thing", lambda: "again") == "again"
    assert index.pairs == before and index.pairs is not before


def test_checkers_sharing_an_index_judge_as_each_does_alone(tmp_path):
    test, history = generate(1_500, seed=5, info_ratio=0.05, fail_ratio=0.05)
    (tmp_path / "shared").mkdir()
    shared = check_all(test, history, tmp_path / "shared")
    assert all("error" not in result for result in shared["checkers"].values())
    for name in CHECKERS:
        (tmp_path / name).mkdir()
        alone = check_all(test, history, tmp_path / name, names=(name,))["checkers"][name]
        assert json.dumps(shared["checkers"][name], sort_keys=True, default=str) == \
            json.dumps(alone, sort_keys=True, default=str), name
