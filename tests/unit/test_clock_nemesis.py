"""The clock nemesis' node environment and the figures ``make bench-nemesis`` derives from a stored run."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from dynactl import service as service_module
from dynactl.service import FAKETIME_LIBRARY, Service, ServiceError, faketime_environment


def load_bench():
    path = Path(__file__).resolve().parents[2] / "scripts" / "bench_nemesis.py"
    spec = importlib.util.spec_from_file_location("bench_nemesis", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench = load_bench()


def a_service(tmp_path: Path, faketime_file: str | None) -> Service:
    config = tmp_path / "node.toml"
    config.write_text('node_id = "n1"\n')
    return Service(config=config, pidfile=tmp_path / "pid", faketime_file=faketime_file)


def test_the_node_environment_keeps_an_existing_preload(tmp_path, monkeypatch):
    monkeypatch.setattr(service_module.Path, "is_file", lambda self: True)
    monkeypatch.setenv("LD_PRELOAD", "/lib/other.so")
    environment = a_service(tmp_path, "/x/clock")._environment()
    assert environment["LD_PRELOAD"].split(":") == [FAKETIME_LIBRARY, "/lib/other.so"]
    assert environment["FAKETIME_TIMESTAMP_FILE"] == "/x/clock"


def test_without_a_timestamp_file_the_node_runs_on_the_real_clock(tmp_path, monkeypatch):
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    environment = a_service(tmp_path, None)._environment()
    assert "LD_PRELOAD" not in environment
    assert not any(name.startswith("FAKETIME") for name in environment)


def test_a_missing_libfaketime_is_refused_with_the_package_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(service_module, "FAKETIME_LIBRARY", str(tmp_path / "absent.so"))
    with pytest.raises(ServiceError, match="apt-get install faketime"):
        a_service(tmp_path, "/x/clock")._environment()


def test_the_wall_clock_is_re_read_on_every_read_and_the_monotonic_clock_stays_real():
    environment = faketime_environment("/x/clock")
    assert environment["FAKETIME_NO_CACHE"] == "1"  # a cached offset would miss the strobe's flips
    assert environment["FAKETIME_DONT_FAKE_MONOTONIC"] == "1"
    assert environment["LD_PRELOAD"].endswith("libfaketimeMT.so.1")  # threads read the clock concurrently


def op(index, process, kind, f, time_ms, **fields):
    return {"index": index, "process": process, "type": kind, "f": f, "time": int(time_ms * 1e6), **fields}


HISTORY = [
    op(0, 0, "invoke", "add", 0), op(1, 1, "invoke", "add", 1),
    op(2, "nemesis", "invoke", "start-clock", 2), op(3, "nemesis", "ok", "start-clock", 3),
    op(4, 0, "ok", "add", 10), op(5, 1, "info", "add", 500),
    op(6, 0, "invoke", "read", 20), op(7, 0, "ok", "read", 21),
    op(8, 0, "invoke", "add", 30), op(9, 0, "fail", "add", 31),
    op(10, 2, "invoke", "add", 40), op(11, 2, "ok", "add", 70),
    op(12, "nemesis", "invoke", "stop-clock", 80), op(13, "nemesis", "ok", "stop-clock", 81),
]


def test_add_latency_counts_acknowledged_adds_only():
    assert bench.add_latencies_ms(HISTORY) == [10.0, 30.0]


def test_only_completed_clock_starts_count_as_faults_run():
    assert bench.faults_run(HISTORY) == 1
    assert bench.faults_run(HISTORY, "partition") == 0


def run(nemesis, acknowledged, latencies):
    return bench.RunFigures(nemesis=nemesis, acknowledged=acknowledged, latencies_ms=tuple(latencies), faults=1,
                            verdict=True, seconds=1.0)


def test_ratios_pool_the_runs_of_each_kind_and_judge_the_aim():
    even = [run("none", 100, [10.0] * 99 + [20.0]), run("clock", 100, [10.0] * 99 + [20.0])]
    assert bench.ratios(even) == {"acknowledged": 1.0, "p50": 1.0, "p90": 1.0, "p99": 1.0}
    assert bench.meets_aim(bench.ratios(even))
    slow = even + [run("clock", 20, [1000.0] * 50)]
    found = bench.ratios(slow)
    assert found["acknowledged"] == pytest.approx(1.2) and found["p50"] == 1.0 and found["p99"] == 100.0
    assert not bench.meets_aim(found)
    assert not bench.meets_aim(bench.ratios([run("none", 100, [1.0])]))  # nothing to compare with


def test_a_systemd_node_gets_its_skew_through_a_runtime_dropin_written_only_when_it_changes(tmp_path, monkeypatch):
    if not Path(FAKETIME_LIBRARY).is_file():
        pytest.skip("libfaketime is not installed")
    reloads = []
    monkeypatch.setattr(service_module, "FAKETIME_DROPIN_DIR", tmp_path / "run")
    monkeypatch.setattr(service_module, "_systemctl", lambda *args: reloads.append(args))
    dropin = tmp_path / "run" / "dynamod.service.d" / "faketime.conf"
    a_service(tmp_path, "/x/clock")._set_faketime_dropin("/x/clock")
    text = dropin.read_text()
    assert f'Environment="LD_PRELOAD={FAKETIME_LIBRARY}"' in text
    assert 'Environment="FAKETIME_TIMESTAMP_FILE=/x/clock"' in text and text.splitlines()[1] == "[Service]"
    assert reloads == [("daemon-reload",)]
    a_service(tmp_path, "/x/clock")._set_faketime_dropin("/x/clock")
    assert reloads == [("daemon-reload",)]  # unchanged: no reload
    a_service(tmp_path, None)._set_faketime_dropin(None)
    assert not dropin.exists() and reloads == [("daemon-reload",)] * 2  # no skew asked: the node runs unskewed


def test_stopping_a_systemd_node_removes_its_skew_so_the_next_start_by_anyone_runs_on_the_real_clock(tmp_path,
                                                                                                       monkeypatch):
    if not Path(FAKETIME_LIBRARY).is_file():
        pytest.skip("libfaketime is not installed")
    calls = []
    monkeypatch.setattr(service_module, "FAKETIME_DROPIN_DIR", tmp_path / "run")
    monkeypatch.setattr(service_module, "_systemctl", lambda *args: calls.append(args))
    skewed = a_service(tmp_path, "/x/clock")
    monkeypatch.setattr(service_module.Service, "uses_systemd", lambda self: True)
    monkeypatch.setattr(service_module.Service, "pid", lambda self: 42)
    skewed._set_faketime_dropin("/x/clock")
    assert skewed.stop() == "stopped"
    assert not (tmp_path / "run" / "dynamod.service.d" / "faketime.conf").exists()
    assert calls == [("daemon-reload",), ("stop", skewed.unit), ("daemon-reload",)]


def test_a_unit_counts_as_running_once_active_with_a_main_pid_and_as_failed_when_it_exited():
    show = service_module.parse_show("ActiveState=active\nSubState=running\nMainPID=412\nResult=success\n")
    assert service_module.running_main_pid(show) == 412 and not service_module.unit_start_failed(show)
    activating = {"ActiveState": "activating", "SubState": "start", "MainPID": "0", "Result": "success"}
    assert service_module.running_main_pid(activating) is None and not service_module.unit_start_failed(activating)
    for state in ({"ActiveState": "activating", "SubState": "auto-restart", "MainPID": "0"},
                  {"ActiveState": "failed", "SubState": "failed", "MainPID": "0", "Result": "exit-code"},
                  {"ActiveState": "inactive", "SubState": "dead", "MainPID": "0"}):
        assert service_module.running_main_pid(state) is None and service_module.unit_start_failed(state)
