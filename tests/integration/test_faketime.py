"""The clock nemesis' hook for real: a node started by ``dynactl service --faketime`` stamps writes and logs with
the timestamp file's offset, follows a change of it while it runs, and keeps its monotonic clock and timed waits
real (libfaketime once made CPython's GIL waits spin, which stalled requests for seconds)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dynactl.local import LocalCluster
from dynactl.service import FAKETIME_LIBRARY, Service
from dynamod.client import DynamoClient
from tests.integration.conftest import free_base_port

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not Path(FAKETIME_LIBRARY).is_file(),
                                 reason=f"needs libfaketime ({FAKETIME_LIBRARY}): apt-get install faketime")]

#: Rounding of the node's ms timestamps and of our own readings around the request.
SLACK_MS = 2


def set_offset(clock: Path, seconds: float) -> None:
    """What the nemesis writes (dynacheck.db.Cluster.set_clock_offsets)."""
    clock.write_text(f"{seconds:+.3f}\n")


def now_ms() -> int:
    return int(time.time() * 1000)


@pytest.fixture
def skewed_node(tmp_path):
    """One node (n=1) run by ``dynactl service`` under libfaketime, its timestamp file at +1 day."""
    cluster = LocalCluster(str(tmp_path / "cluster"))
    cluster.create(1, base_port=free_base_port(1), settings={"n": 1, "r": 1, "w": 1, "partitions": 8,
                                                            "engine": "memory"})
    [node] = cluster.nodes
    clock = tmp_path / "clock"
    set_offset(clock, 86400)
    service = Service.from_config(node.config, faketime_file=str(clock))
    before = now_ms()
    service.start(wait=30.0)
    after = now_ms()
    client = DynamoClient(node.http)
    try:
        yield client, clock, node, (before, after)
    finally:
        client.close()
        service.stop()


def put_timestamp(client: DynamoClient, key: str) -> tuple[int, int, int]:
    """(real ms before the PUT, the stored sibling's timestamp, real ms after)."""
    before = now_ms()
    client.put(key, b"x")
    after = now_ms()
    replica = client.replica(key)
    assert replica is not None
    [sibling] = replica["siblings"]
    return before, sibling["timestamp"], after


def test_a_node_stamps_writes_with_the_file_offset_and_follows_changes_at_once(skewed_node):
    client, clock, _, _ = skewed_node
    # Large jumps both ways and a sub-second one: the strobe flips offsets every 25-100 ms.
    for index, offset in enumerate((86400.0, -3600.0, 0.75, -0.25, 0.0)):
        set_offset(clock, offset)
        before, stamped, after = put_timestamp(client, f"key-{index}")
        skew = offset * 1000
        assert before + skew - SLACK_MS <= stamped <= after + skew + SLACK_MS, (offset, stamped - before)


def test_the_status_document_reports_the_skewed_wall_clock(skewed_node):
    """What the clock nemesis reads to see that its offset took effect (``dynacheck.nemesis.effect``)."""
    client, clock, _, _ = skewed_node
    for offset in (86400.0, -2.5, 0.0):
        set_offset(clock, offset)
        before = now_ms()
        reported = client.status()["wall_clock"] * 1000 - offset * 1000
        after = now_ms()
        assert before - SLACK_MS <= reported <= after + SLACK_MS, (offset, reported - before)


def test_a_node_logs_in_its_skewed_time(skewed_node):
    _, _, node, (before, after) = skewed_node
    lines = [json.loads(line) for line in Path(node.log).read_text().splitlines() if line.strip()]
    serving = next(line for line in lines if "serving" in line["message"])
    assert before + 86400_000 - 1000 <= serving["time"] * 1000 <= after + 86400_000 + 1000


def run_under_faketime(tmp_path: Path, offset: float, code: str) -> dict:
    """Run ``code`` (printing one JSON document) in a Python child with the environment a node gets."""
    clock = tmp_path / "clock"
    set_offset(clock, offset)
    config = tmp_path / "node.toml"
    config.write_text('node_id = "n1"\n')
    environment = Service(config=config, pidfile=tmp_path / "pid", faketime_file=str(clock))._environment()
    done = subprocess.run([sys.executable, "-c", code], env=environment, capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_only_the_wall_clock_moves(tmp_path):
    before_wall, before_monotonic = time.time(), time.monotonic()
    seen = run_under_faketime(tmp_path, -5000.0, "import json, time\n"
                              "print(json.dumps({'wall': time.time(), 'monotonic': time.monotonic(),"
                              " 'perf': time.perf_counter()}))")
    after_wall, after_monotonic = time.time(), time.monotonic()
    assert before_wall - 5000 <= seen["wall"] <= after_wall - 5000
    # CLOCK_MONOTONIC is one clock for every process of the machine: the child's must be ours.
    assert before_monotonic <= seen["monotonic"] <= after_monotonic
    assert before_monotonic <= seen["perf"] <= after_monotonic


#: A thread that wants the GIL while the main thread computes: it must sleep in a timed wait (the switch
#: interval) and then get the GIL, not spin (libfaketime <= 0.9.12 with its "forced monotonic fix" turned
#: those deadlines negative) nor wait for ever (a deadline turned into the far future).
GIL_PROBE = """
import json, sys, threading, time
sys.setswitchinterval(0.05)
stop = time.monotonic() + 1.0
found = {"rounds": 0}
def waiter():
    pause = threading.Event()
    cpu, start = time.thread_time(), time.monotonic()
    while time.monotonic() < stop:
        pause.wait(0.001)  # without the GIL; then it must take the GIL back from the busy main thread
        found["rounds"] += 1
    found["cpu_share"] = (time.thread_time() - cpu) / (time.monotonic() - start)
thread = threading.Thread(target=waiter)
thread.start()
while time.monotonic() < stop:
    sum(range(200))
thread.join()
print(json.dumps(found))
"""


def test_a_thread_waiting_for_the_gil_sleeps_and_then_gets_it(tmp_path):
    found = run_under_faketime(tmp_path, 1.5, GIL_PROBE)
    # Each round waits one 50 ms switch interval: ~20 a second; a spinning waiter burnt ~50% of a core
    # (measured: 0.3-0.5) and managed 6 rounds, a correct one uses well under 1% (0.002-0.004).
    assert found["cpu_share"] < 0.1, found
    assert found["rounds"] >= 5, found

