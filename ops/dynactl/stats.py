"""``dynactl stats``: a node's /metrics summarised per operation (counts, latency quantiles, and
where a request's time goes, stage by stage); ``make bench`` reads the stages the same way."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from dynamod.api.metrics import STAGES
from dynamod.api.metrics import StageHistograms as StageHistogramsCollector


def _quantile(buckets: list[tuple[float, float]], fraction: float) -> float | None:
    """Upper bound of the histogram bucket holding the ``fraction`` quantile (seconds)."""
    if not buckets or buckets[-1][1] == 0:
        return None
    wanted = fraction * buckets[-1][1]
    for bound, cumulative in buckets:
        if cumulative >= wanted:
            return bound
    return None


STAGE_FAMILY = StageHistogramsCollector.name

#: ``(op, stage)`` -> ``(buckets, sum)``: cumulative ``(upper bound, count)`` pairs, ascending.
StageHistograms = dict[tuple[str, ...], tuple[list[tuple[float, float]], float]]
#: The garbage collector's pauses (``dynamod.api.metrics.GcPauses``), by generation.
GC_FAMILY = "dynamod_gc_pause_seconds"


def stage_histograms(metrics_text: str, family_name: str = STAGE_FAMILY,
                     labels: tuple[str, ...] = ("op", "stage")) -> StageHistograms:
    """The stage histograms of one node's /metrics (or another histogram family's, keyed by the
    values of its ``labels``)."""
    buckets: dict[tuple[str, ...], list[tuple[float, float]]] = defaultdict(list)
    sums: dict[tuple[str, ...], float] = {}
    for family in text_string_to_metric_families(metrics_text):
        if family.name != family_name:
            continue
        for sample in family.samples:
            series = tuple(sample.labels[label] for label in labels)
            if sample.name == family_name + "_bucket":
                buckets[series].append((float(sample.labels["le"]), sample.value))
            elif sample.name == family_name + "_sum":
                sums[series] = sample.value
    return {series: (sorted(pairs), sums.get(series, 0.0)) for series, pairs in buckets.items()}


def stage_delta(before: StageHistograms, after: StageHistograms) -> StageHistograms:
    """What was observed between two scrapes of the same node (a series new in ``after`` counts
    whole)."""
    delta: StageHistograms = {}
    for series, (buckets, total) in after.items():
        earlier = dict(before.get(series, ([], 0.0))[0])
        delta[series] = ([(bound, count - earlier.get(bound, 0.0)) for bound, count in buckets],
                         total - before.get(series, ([], 0.0))[1])
    return delta


def stage_sum(histograms: list[StageHistograms]) -> StageHistograms:
    """Several nodes' stage histograms added up (they share their buckets)."""
    combined: dict[tuple[str, str], tuple[dict[float, float], float]] = {}
    for one in histograms:
        for series, (buckets, total) in one.items():
            counts, seen = combined.get(series, ({}, 0.0))
            for bound, count in buckets:
                counts[bound] = counts.get(bound, 0.0) + count
            combined[series] = (counts, seen + total)
    return {series: (sorted(counts.items()), total) for series, (counts, total) in combined.items()}


def interpolated_quantile(buckets: list[tuple[float, float]], fraction: float) -> float | None:
    """The ``fraction`` quantile of a cumulative histogram, interpolated linearly inside its
    bucket as Prometheus' ``histogram_quantile`` does (None: nothing observed; a quantile in the
    ``+Inf`` bucket is the highest finite bound)."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    wanted = fraction * buckets[-1][1]
    lower, below = 0.0, 0.0
    for bound, cumulative in buckets:
        if cumulative >= wanted:
            if bound == float("inf"):
                return lower
            inside = cumulative - below
            return lower + (bound - lower) * ((wanted - below) / inside if inside else 1.0)
        lower, below = bound, cumulative
    return lower


def stage_table(histograms: StageHistograms) -> dict[str, dict[str, dict[str, Any]]]:
    """``op`` -> ``stage`` -> count, mean and interpolated p50/p99/p99.9 in milliseconds, for
    every stage that observed anything, in request order."""
    table: dict[str, dict[str, dict[str, Any]]] = {}
    for op in sorted({op for op, _ in histograms}):
        for stage in STAGES:
            buckets, total = histograms.get((op, stage), ([], 0.0))
            count = buckets[-1][1] if buckets else 0.0
            if count <= 0:
                continue
            table.setdefault(op, {})[stage] = {
                "count": int(count), "mean_ms": round(1000 * total / count, 3),
                **{name: _ms(interpolated_quantile(buckets, fraction))
                   for name, fraction in (("p50_ms", 0.5), ("p99_ms", 0.99), ("p999_ms", 0.999))}}
    return table


def gc_table(histograms: StageHistograms) -> dict[str, dict[str, Any]]:
    """``generation`` -> collections, seconds paused in all, interpolated p99 and the upper
    bound of the longest pause's bucket (ms), for the generations that collected."""
    table = {}
    for (generation,), (buckets, total) in sorted(histograms.items()):
        count = buckets[-1][1] if buckets else 0.0
        if count <= 0:
            continue
        longest = next(bound for bound, cumulative in buckets if cumulative >= count)
        table[generation] = {"count": int(count), "total_s": round(total, 3),
                             "p99_ms": _ms(interpolated_quantile(buckets, 0.99)),
                             "longest_le_ms": None if longest == float("inf") else _ms(longest)}
    return table


def summarise(metrics_text: str) -> dict[str, Any]:
    """Requests per operation and status code, latency per operation, the stages of client
    requests, and the node's counters."""
    requests: dict[str, dict[str, float]] = defaultdict(dict)
    buckets: dict[str, list[tuple[float, float]]] = defaultdict(list)
    sums: dict[str, float] = {}
    counters: dict[str, float] = {}
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == "dynamod_requests_total":
                requests[sample.labels["op"]][sample.labels["code"]] = sample.value
            elif sample.name == "dynamod_request_seconds_bucket":
                buckets[sample.labels["op"]].append((float(sample.labels["le"]), sample.value))
            elif sample.name == "dynamod_request_seconds_sum":
                sums[sample.labels["op"]] = sample.value
            elif sample.name.startswith("dynamod_") and not sample.labels and not sample.name.endswith("_created"):
                counters[sample.name.removeprefix("dynamod_")] = sample.value
    operations = {}
    for op, by_code in sorted(requests.items()):
        count = sum(by_code.values())
        ordered = sorted(buckets.get(op, []))
        operations[op] = {
            "count": int(count),
            "by_code": {code: int(n) for code, n in sorted(by_code.items())},
            "mean_ms": round(1000 * sums.get(op, 0.0) / count, 3) if count else None,
            "p50_le_ms": _ms(_quantile(ordered, 0.5)),
            "p99_le_ms": _ms(_quantile(ordered, 0.99)),
        }
    return {"operations": operations, "stages": stage_table(stage_histograms(metrics_text)), "counters": counters}


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None or seconds == float("inf") else round(seconds * 1000, 3)
