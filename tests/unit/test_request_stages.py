"""Where a request's time goes: the stage histograms, timed on a fake clock through real
coordinators (``tests.sim``) and read back as Prometheus text."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from twisted.internet import defer

from dynactl.stats import interpolated_quantile, stage_delta, stage_histograms, stage_sum, stage_table
from dynamod.api.metrics import STAGES, StageHistograms
from dynamod.core.quorum import Outcome
from dynamod.core.versions import CausalContext
from tests.sim import fired, make_cluster


class DelayedPeer:
    """A peer whose answers (and failures) arrive ``delay`` seconds after the request."""

    def __init__(self, peer, clock, delay: float):
        self.peer, self.clock, self.delay = peer, clock, delay

    def call(self, op, payload, timeout):
        later: defer.Deferred = defer.Deferred()
        self.peer.call(op, payload, timeout).addBoth(
            lambda result: self.clock.callLater(self.delay, later.callback, result))
        return later


def stage(histograms: StageHistograms, op: str, name: str):
    """(count, total seconds) of one stage."""
    series = histograms.series(op)[STAGES.index(name)]
    return sum(series.counts), series.total


def delayed_cluster(size=3, delays=None):
    network, clock = make_cluster(size=size)
    for node, coordinator in network.nodes.items():
        for peer, delay in (delays or {}).items():
            if peer != node:
                coordinator.peers[peer] = DelayedPeer(coordinator.peers[peer], clock, delay)
    return network, clock


def test_a_put_times_parsing_coordination_each_replica_the_quorum_and_the_answer():
    network, clock = delayed_cluster(delays={"n2": 0.03, "n3": 0.2})
    histograms = StageHistograms(now=clock.seconds)
    clock.advance(10.0)
    stages = histograms.start("put", received=clock.seconds() - 0.002)
    answers = []
    network.nodes["n1"].put(b"k", b"v", CausalContext(), 2, stages=stages).addCallback(answers.append)
    assert stage(histograms, "put", "parse") == (1, pytest.approx(0.002))
    assert stage(histograms, "put", "coordinate")[0] == 1
    assert stage(histograms, "put", "local")[0] == 1  # the memory engine is durable at once
    clock.advance(0.03)
    assert answers and answers[0].result.outcome is Outcome.OK
    assert stage(histograms, "put", "quorum") == (1, pytest.approx(0.03))
    clock.advance(0.001)
    stages.written()
    assert stage(histograms, "put", "respond") == (1, pytest.approx(0.001))
    clock.advance(0.169)  # the slow replica is still timed after the quorum answered
    assert stage(histograms, "put", "remote") == (2, pytest.approx(0.23))


def test_a_get_times_the_local_read_and_each_remote_reply():
    network, clock = delayed_cluster(delays={"n2": 0.004, "n3": 0.004})
    histograms = StageHistograms(now=clock.seconds)
    network.nodes["n1"].get(b"k", 2, stages=histograms.start("get", received=clock.seconds()))
    assert stage(histograms, "get", "local") == (1, 0.0)
    assert stage(histograms, "get", "quorum")[0] == 0
    clock.advance(0.004)
    assert stage(histograms, "get", "remote") == (2, pytest.approx(0.008))
    assert stage(histograms, "get", "quorum") == (1, pytest.approx(0.004))


def test_a_forwarded_put_counts_the_forward_as_its_fan_out():
    network, clock = make_cluster(size=5)
    key = b"forwarded"
    outsider = next(node for node in network.nodes if node not in network.nodes["n1"].replicas(key))
    histograms = StageHistograms(now=clock.seconds)
    answer = fired(network.nodes[outsider].put(key, b"v", CausalContext(), 2,
                                               stages=histograms.start("put", received=0.0)))
    assert answer.result.outcome is Outcome.OK
    assert stage(histograms, "put", "quorum")[0] == 1
    assert stage(histograms, "put", "local")[0] == stage(histograms, "put", "remote")[0] == 0


def test_a_request_that_failed_its_quorum_still_reaches_the_quorum_stage():
    network, clock = make_cluster()
    network.down.update({"n2", "n3"})
    histograms = StageHistograms(now=clock.seconds)
    answer = fired(network.nodes["n1"].put(b"k", b"v", CausalContext(), 3,
                                           stages=histograms.start("put", received=0.0)))
    assert answer.result.outcome is Outcome.FAILED
    assert stage(histograms, "put", "quorum")[0] == 1


def test_the_stages_read_as_one_cumulative_prometheus_histogram_per_op_and_stage():
    now = [100.0]
    histograms = StageHistograms(now=lambda: now[0])
    for received in (99.99995, 99.97, 99.0):  # parse: 0.05 ms, 30 ms, 1 s
        histograms.start("get", received=received)
    histograms.start("put", received=101.0)  # a clock step backwards counts as zero
    registry = CollectorRegistry()
    registry.register(histograms)
    text = generate_latest(registry).decode()
    name = "dynamod_request_stage_seconds"
    assert f'{name}_bucket{{le="0.0001",op="get",stage="parse"}} 1.0' in text
    assert f'{name}_bucket{{le="0.025",op="get",stage="parse"}} 1.0' in text
    assert f'{name}_bucket{{le="0.05",op="get",stage="parse"}} 2.0' in text
    assert f'{name}_bucket{{le="1.0",op="get",stage="parse"}} 3.0' in text
    assert f'{name}_bucket{{le="+Inf",op="get",stage="parse"}} 3.0' in text
    assert f'{name}_count{{op="get",stage="parse"}} 3.0' in text
    assert f'{name}_bucket{{le="0.0001",op="put",stage="parse"}} 1.0' in text
    assert f'{name}_count{{op="put",stage="quorum"}} 0.0' in text
    assert text.count(f"# TYPE {name} histogram") == 1


def scrape(histograms: StageHistograms) -> str:
    registry = CollectorRegistry()
    registry.register(histograms)
    return generate_latest(registry).decode()


def test_two_scrapes_of_two_nodes_give_the_stages_of_what_ran_between_them():
    now = [100.0]
    nodes = [StageHistograms(now=lambda: now[0]) for _ in range(2)]
    nodes[0].start("put", received=99.0)  # before the measured window: 1 s
    before = [stage_histograms(scrape(node)) for node in nodes]
    for node in nodes:
        for _ in range(50):
            node.start("put", received=99.996)  # 4 ms, in the (2.5, 5] ms bucket
    nodes[1].start("get", received=99.99995)
    after = [stage_histograms(scrape(node)) for node in nodes]
    window = stage_sum([stage_delta(b, a) for b, a in zip(before, after, strict=True)])
    table = stage_table(window)
    assert table["put"]["parse"]["count"] == 100 and table["put"]["parse"]["mean_ms"] == pytest.approx(4.0)
    # Interpolated inside (2.5, 5] ms: the median half-way, p99 near the top; the 1 s request
    # before the window is not counted.
    assert table["put"]["parse"]["p50_ms"] == pytest.approx(3.75)
    assert table["put"]["parse"]["p99_ms"] == pytest.approx(4.975)
    assert list(table["put"]) == ["parse"] and table["get"]["parse"]["count"] == 1


def test_an_interpolated_quantile_in_the_overflow_bucket_is_the_highest_finite_bound():
    buckets = [(0.1, 0.0), (1.0, 1.0), (float("inf"), 3.0)]
    assert interpolated_quantile(buckets, 0.99) == 1.0
    assert interpolated_quantile(buckets, 0.2) == pytest.approx(0.1 + 0.9 * 0.6)
    assert interpolated_quantile([(0.1, 0.0), (float("inf"), 0.0)], 0.5) is None


def test_garbage_collections_are_timed_by_generation_once_installed():
    import gc

    from dynamod.api.metrics import GcPauses

    pauses = GcPauses()
    gc.collect(1)
    assert sum(pauses.series[1].counts) == 0  # not installed: nothing observed
    enabled = gc.isenabled()
    gc.disable()  # only the collections asked for below
    pauses.install()
    try:
        pauses.install()  # once per process, however often asked
        gc.collect(1)
        gc.collect(2)
    finally:
        pauses.uninstall()
        if enabled:
            gc.enable()
    assert [sum(series.counts) for series in pauses.series][1:] == [1, 1]
    assert pauses.callback not in gc.callbacks
    registry = CollectorRegistry()
    registry.register(pauses)
    assert 'dynamod_gc_pause_seconds_count{generation="2"} 1.0' in generate_latest(registry).decode()


def test_the_gc_table_gives_each_generations_collections_and_longest_pause():
    from dynactl.stats import GC_FAMILY, gc_table
    from dynamod.api.metrics import GcPauses

    now = [0.0]
    pauses = GcPauses(now=lambda: now[0])
    for generation, seconds in ((0, 0.0002), (0, 0.0003), (2, 0.07)):
        pauses.callback("start", {"generation": generation})
        now[0] += seconds
        pauses.callback("stop", {"generation": generation})
    registry = CollectorRegistry()
    registry.register(pauses)
    table = gc_table(stage_histograms(generate_latest(registry).decode(), GC_FAMILY, ("generation",)))
    assert set(table) == {"0", "2"}
    assert table["0"]["count"] == 2 and table["0"]["longest_le_ms"] == 0.5
    assert table["2"] == {"count": 1, "total_s": 0.07, "p99_ms": pytest.approx(99.4, abs=0.1),
                          "longest_le_ms": 100.0}
