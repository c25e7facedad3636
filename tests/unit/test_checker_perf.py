"""The perf checker: latency quantiles per op type and outcome, rates, and the two plots."""

from __future__ import annotations

import json

import pytest

from dynacheck.checkers import perf

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MS = 1_000_000


def client_op(index: int, process: int, f: str, start_ms: float, latency_ms: float | None, outcome: str = "ok"):
    """An invoke and (unless ``latency_ms`` is None) its completion, as history ops."""
    invoke = {"index": index, "time": int(start_ms * MS), "process": process, "type": "invoke", "f": f,
              "key": "k", "value": index, "node": "n1"}
    if latency_ms is None:
        return [invoke]
    return [invoke, {**invoke, "time": int((start_ms + latency_ms) * MS), "type": outcome}]


def sequential(latencies_ms: list[float], f: str = "add", outcome: str = "ok", process: int = 0, start_ms: float = 0):
    """One process doing ops back to back with the given latencies."""
    ops, now = [], start_ms
    for latency in latencies_ms:
        ops += client_op(len(ops), process, f, now, latency, outcome)
        now += latency + 1
    return ops


def nemesis(fault: str, start_ms: float, stop_ms: float):
    return [{"time": int(start_ms * MS), "process": "nemesis", "type": "invoke", "f": f"start-{fault}"},
            {"time": int(start_ms * MS) + 1, "process": "nemesis", "type": "info", "f": f"start-{fault}"},
            {"time": int(stop_ms * MS), "process": "nemesis", "type": "invoke", "f": f"stop-{fault}"},
            {"time": int(stop_ms * MS) + 1, "process": "nemesis", "type": "info", "f": f"stop-{fault}"}]


def by_time(ops):
    return sorted(ops, key=lambda op: op["time"])


def test_known_latencies_give_nearest_rank_quantiles():
    history = sequential([float(ms) for ms in range(1, 101)])  # 1 ms .. 100 ms
    result = perf.check({}, history, None)
    assert result["valid"] is True
    ok = result["latencies"]["add"]["ok"]
    assert ok["count"] == 100
    assert ok["quantiles"] == {"0.5": 50.0, "0.95": 95.0, "0.99": 99.0, "0.999": 100.0, "1": 100.0}


def test_quantiles_are_kept_apart_per_op_type_and_outcome():
    history = by_time(sequential([10.0] * 5, f="add", process=0)
                      + sequential([200.0] * 3, f="read", outcome="fail", process=1))
    latencies = perf.check({}, history, None)["latencies"]
    assert latencies["add"]["ok"]["quantiles"]["1"] == 10.0
    assert latencies["read"]["fail"] == {"count": 3, "quantiles": {q: 200.0 for q in
                                                                    ("0.5", "0.95", "0.99", "0.999", "1")}}
    assert set(latencies["add"]) == {"ok"}


def test_an_invoke_without_completion_is_counted_as_info_without_a_latency():
    history = sequential([5.0, 5.0], process=0) + client_op(10, 1, "add", 3, None)
    result = perf.check({}, by_time(history), None)
    info = result["latencies"]["add"]["info"]
    assert info["count"] == 1 and info["unfinished"] == 1
    assert info["quantiles"] == {}
    assert result["latencies"]["add"]["ok"]["count"] == 2


def test_completed_info_ops_have_latencies_and_are_not_failures():
    history = sequential([40.0], outcome="info")
    latencies = perf.check({}, history, None)["latencies"]["add"]
    assert set(latencies) == {"info"}
    assert latencies["info"]["quantiles"]["0.5"] == 40.0


def test_rates_count_ops_per_second_over_the_run():
    # 10 ops in (about) one second: 10 ops/s for add.
    history = by_time([op for index in range(10) for op in client_op(index, index, "add", index * 100, 100.0)])
    result = perf.check({}, history, None)
    assert result["duration_s"] == pytest.approx(1.0)
    assert result["rates"]["add"] == pytest.approx(10.0)


def test_no_client_ops_is_unknown_and_draws_nothing(tmp_path):
    history = nemesis("partition", 0, 10)
    result = perf.check({}, history, tmp_path)
    assert result["valid"] == "unknown"
    assert result["files"] == [] and list(tmp_path.iterdir()) == []
    assert perf.check({}, [], None)["valid"] == "unknown"


def test_convergence_polls_are_not_client_ops():
    polls = [{"time": 5 * MS, "process": "convergence", "type": "invoke", "f": "replica", "node": "n1"},
             {"time": 6 * MS, "process": "convergence", "type": "ok", "f": "replica", "node": "n1", "value": []}]
    assert perf.check({}, polls, None)["valid"] == "unknown"


def test_plots_are_written_with_nemesis_intervals(tmp_path):
    history = by_time(sequential([float(ms % 17 + 1) for ms in range(300)], process=0)
                      + sequential([3.0] * 50, f="read", outcome="fail", process=1)
                      + client_op(999, 2, "read", 10, None)
                      + nemesis("partition", 100, 900) + nemesis("kill", 1500, 2000) + nemesis("clock", 2500, 2600)
                      + [{"time": 4000 * MS, "process": "convergence", "type": "invoke", "f": "replica"}])
    result = perf.check({"name": "t"}, history, tmp_path)
    assert result["files"] == ["latency-raw.png", "rate.png"]
    for name in result["files"]:
        data = (tmp_path / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5_000
    assert result["points"] == {"shown": 350, "total": 350, "downsampled": False}
    json.dumps(result)  # results.json must be able to hold it


def test_large_series_are_downsampled_but_rare_ones_are_drawn_whole(tmp_path, monkeypatch):
    monkeypatch.setattr(perf, "MAX_POINTS", 200)
    history = by_time(sequential([1.0] * 1000, process=0) + sequential([2.0] * 20, outcome="fail", process=1))
    points = perf.check({}, history, tmp_path)["points"]
    assert points["downsampled"] is True and points["total"] == 1020
    assert 20 < points["shown"] <= 200


def test_point_cap_fills_the_budget_from_the_smallest_series():
    assert perf._point_cap([10, 1000, 1000], 210) == 100
    assert perf._point_cap([10, 20], 1000) == 20
