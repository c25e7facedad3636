"""Prometheus metrics of one node (served at /metrics): request counts and latencies per operation."""

from __future__ import annotations

import gc
import itertools
import time
from bisect import bisect_left
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import HistogramMetricFamily

#: Latency buckets (seconds) spanning loopback round trips to quorum timeouts.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class NodeMetrics:
    """The node's metric families, in a registry of their own (never the process-global one)."""

    def __init__(self, now: Callable[[], float] = time.monotonic) -> None:
        """``now``: the clock the HTTP server stamps a request's ``received`` with (the reactor's)."""
        self.registry = CollectorRegistry()
        self.requests = Counter("dynamod_requests", "HTTP requests by operation and status code",
                                ["op", "code"], registry=self.registry)
        self.latency = Histogram("dynamod_request_seconds", "HTTP request latency by operation",
                                 ["op"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.corrupt_records = Counter("dynamod_corrupt_records", "stored records that failed to decode",
                                       registry=self.registry)
        self.storage_batches = Gauge("dynamod_storage_batches", "group flushes (fsyncs) since start",
                                     registry=self.registry)
        self.storage_updates = Gauge("dynamod_storage_updates", "record updates since start",
                                     registry=self.registry)
        self.read_repairs = Counter("dynamod_read_repairs", "replicas sent reconciled versions after a read",
                                    registry=self.registry)
        self.read_repairs_deferred = Counter("dynamod_read_repairs_deferred",
                                             "read repairs skipped by admission control (anti-entropy catches up)",
                                             registry=self.registry)
        self.oversized_key_writes = Counter("dynamod_oversized_key_writes",
                                            "writes that left a key's stored versions past key_size_warning",
                                            registry=self.registry)
        self.handoffs = Counter("dynamod_handoffs", "fallback copies acknowledged by their owner",
                                registry=self.registry)
        self.forwarded_puts = Counter("dynamod_forwarded_puts", "client PUTs and DELETEs this node forwarded "
                                      "to a replica of the key (it holds none of the key's replicas)",
                                      registry=self.registry)
        self.batch_seconds = Histogram("dynamod_storage_batch_seconds",
                                       "time from handing a group of updates to the flusher to their durability",
                                       buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch_size = Histogram("dynamod_storage_batch_size", "updates per group flush",
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=self.registry)
        self.http_connections = Gauge("dynamod_http_connections", "open HTTP client connections",
                                      registry=self.registry)
        self.http_closed = Counter("dynamod_http_connections_closed",
                                   "HTTP connections closed or refused by a limit, by reason (header_timeout, "
                                   "body_timeout, idle, unread_answers, connection_limit)",
                                   ["reason"], registry=self.registry)
        self.peers_reachable = Gauge("dynamod_peers_reachable", "peers with an open connection",
                                     registry=self.registry)
        self.stages = StageHistograms(now)
        self.registry.register(self.stages)
        #: registered here, fed only once the process installs it (``dynamod.main``)
        self.gc_pauses = GcPauses()
        self.registry.register(self.gc_pauses)


#: Stage buckets: the latency buckets with two finer ones below 0.5 ms (parsing and coordinating
#: take tens of microseconds).
STAGE_BUCKETS = (0.0001, 0.00025, *LATENCY_BUCKETS)

#: Where a client request's time goes, in order (``dynamod_request_stage_seconds{op,stage}``):
#: ``parse`` from its last bytes' arrival to the handler's call (parsing, and waiting behind the
#: connection's earlier requests), ``coordinate`` from there to the fan-out (a PUT's stamp and
#: local commit), ``local`` from the fan-out to the local replica's answer (a PUT's durable group
#: flush, a GET's read), ``remote`` from the fan-out to each remote replica's answer (one
#: observation per replica), ``quorum`` from the fan-out to the quorum's outcome, and ``respond``
#: from the outcome (or the handler's call, for a request that never fanned out) until the
#: answer is written.
STAGES = ("parse", "coordinate", "local", "remote", "quorum", "respond")


class StageSeries:
    """One ``(op, stage)`` histogram: plain counters bumped on the event loop (a Prometheus
    ``Histogram.observe`` costs ~3 µs with its locks; six per request would be noticeable)."""

    __slots__ = ("counts", "total", "bounds")

    def __init__(self, bounds: tuple[float, ...]):
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        """Count one duration (a negative one, from a clock step, counts as zero)."""
        seconds = max(seconds, 0.0)
        self.counts[bisect_left(self.bounds, seconds)] += 1
        self.total += seconds

    def cumulative(self) -> list[tuple[str, int]]:
        """``(le, count)`` pairs as a Prometheus histogram family takes them, ``+Inf`` last."""
        bounds = [format_bound(bound) for bound in self.bounds] + ["+Inf"]
        return list(zip(bounds, itertools.accumulate(self.counts), strict=True))


class StageHistograms:
    """The ``dynamod_request_stage_seconds`` family as a collector of its own; ``start`` times
    one request. Everything runs on the event loop (observations and /metrics alike)."""

    name = "dynamod_request_stage_seconds"

    def __init__(self, now: Callable[[], float] = time.monotonic, buckets: tuple[float, ...] = STAGE_BUCKETS):
        self.now = now
        self.buckets = buckets
        self._series: dict[str, tuple[StageSeries, ...]] = {}

    def series(self, op: str) -> tuple[StageSeries, ...]:
        """The stage histograms of ``op``, in ``STAGES`` order."""
        found = self._series.get(op)
        if found is None:
            found = self._series[op] = tuple(StageSeries(self.buckets) for _ in STAGES)
        return found

    def start(self, op: str, received: float) -> RequestStages:
        """The handler of a request whose bytes were complete at ``received`` (``now``'s clock)
        is called now."""
        return RequestStages(self.series(op), self.now, received)

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(self.name, "time a client request spends in each stage of its "
                                       "answer (parse, coordinate, local, remote, quorum, respond)",
                                       labels=["op", "stage"])
        for op, series in sorted(self._series.items()):
            for stage, histogram in zip(STAGES, series, strict=True):
                family.add_metric([op, stage], histogram.cumulative(), histogram.total)
        yield family


def format_bound(bound: float) -> str:
    """A bucket bound as Prometheus writes it (``0.001``, ``1.0``)."""
    return repr(float(bound))


class RequestStages:
    """The stage clock of one request: each hook reads the clock once and observes the stage
    that just ended. The coordinator calls ``fanned_out``, ``answered`` (per replica) and
    ``quorum_reached``; the HTTP server calls ``written``."""

    __slots__ = ("_series", "_now", "_mark", "_fanout")

    def __init__(self, series: tuple[StageSeries, ...], now: Callable[[], float], received: float):
        self._series = series
        self._now = now
        self._mark = self._fanout = now()
        series[0].observe(self._mark - received)

    def fanned_out(self) -> None:
        """The coordinator is about to contact the replicas."""
        self._fanout = now = self._now()
        self._series[1].observe(now - self._mark)
        self._mark = now

    def answered(self, local: bool) -> None:
        """A replica answered (or failed) this request."""
        self._series[2 if local else 3].observe(self._now() - self._fanout)

    def quorum_reached(self) -> None:
        """The quorum's outcome is known (reached, failed or timed out)."""
        self._mark = now = self._now()
        self._series[4].observe(now - self._fanout)

    def written(self) -> None:
        """The answer was handed to the connection."""
        self._series[5].observe(self._now() - self._mark)


class GcPauses:
    """``dynamod_gc_pause_seconds{generation}``: how long each cyclic garbage collection stopped
    the process (the event loop included), by the oldest generation it collected. Fed by
    ``gc.callbacks``, which is process-wide: ``install`` once per process, ``uninstall`` after."""

    name = "dynamod_gc_pause_seconds"

    def __init__(self, now: Callable[[], float] = time.perf_counter, buckets: tuple[float, ...] = STAGE_BUCKETS):
        self.now = now
        self.buckets = buckets
        self.series = tuple(StageSeries(buckets) for _ in range(3))
        self._started = 0.0

    def install(self) -> None:
        if self.callback not in gc.callbacks:
            gc.callbacks.append(self.callback)

    def uninstall(self) -> None:
        if self.callback in gc.callbacks:
            gc.callbacks.remove(self.callback)

    def callback(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._started = self.now()
        else:
            self.series[info["generation"]].observe(self.now() - self._started)

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(self.name, "pauses of the cyclic garbage collector, by the oldest "
                                       "generation collected", labels=["generation"])
        for generation, histogram in enumerate(self.series):
            family.add_metric([str(generation)], histogram.cumulative(), histogram.total)
        yield family
