"""``dynactl stats``: a node's /metrics summarised per operation (counts, latency quantiles)."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from prometheus_client.parser import text_string_to_metric_families


def _quantile(buckets: list[tuple[float, float]], fraction: float) -> float | None:
    """Upper bound of the histogram bucket holding the ``fraction`` quantile (seconds)."""
    if not buckets or buckets[-1][1] == 0:
        return None
    wanted = fraction * buckets[-1][1]
    for bound, cumulative in buckets:
        if cumulative >= wanted:
            return bound
    return None


def summarise(metrics_text: str) -> dict[str, Any]:
    """Requests per operation and status code, latency per operation, and the node's counters."""
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
    return {"operations": operations, "counters": counters}


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None or seconds == float("inf") else round(seconds * 1000, 3)
