"""Jepsen's perf checker: latency quantiles and throughput per op type and outcome, with two plots.

``latency-raw.png`` scatters every client op's latency (ms, log scale) at its invocation time;
``rate.png`` draws completions per second. Both shade the nemesis' fault intervals, one colour per
fault kind, and the convergence polling done after the test. Perf never judges the run: it is valid
whenever there is something to measure, ``"unknown"`` when there are no client ops at all.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from dynacheck.history import CONVERGENCE, FAIL, INFO, NEMESIS, OK, HistoryIndex, Op, nemesis_intervals

QUANTILES = (0.5, 0.95, 0.99, 0.999, 1.0)
#: Jepsen's colours for outcomes; the op type (f) gets a marker shape / line style instead.
OUTCOME_COLOURS = {OK: "#4A90D9", INFO: "#FFA400", FAIL: "#FF1E90"}
FAULT_COLOURS = {"partition": "#E15759", "clock": "#76B7B2", "kill": "#9C755F", "pause": "#B07AA1",
                 "netem": "#59A14F"}
SPARE_FAULT_COLOURS = ("#EDC948", "#BAB0AC", "#F28E2B", "#4E79A7")
MARKERS = ("o", "^", "s", "D", "v", "P", "X", "*")
LINE_STYLES = ("-", "--", ":", "-.")
#: Above this many points the scatter keeps every k-th op of the big series (the PNG stays readable
#: and drawing stays well under a second); small series such as rare failures are always drawn whole.
MAX_POINTS = 100_000
LATENCY_FILE, RATE_FILE = "latency-raw.png", "rate.png"
NS_PER_S, NS_PER_MS = 1e9, 1e6


class Series:
    """The client ops of one (f, outcome): invocation times, completion times (None when unfinished)."""

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.ends: list[int] = []
        self.unfinished_starts: list[int] = []

    @property
    def count(self) -> int:
        return len(self.starts) + len(self.unfinished_starts)

    def latencies_ms(self) -> np.ndarray:
        return (np.asarray(self.ends, dtype=np.int64) - np.asarray(self.starts, dtype=np.int64)) / NS_PER_MS


def collect(client_pairs: Iterable[tuple[Op, Op | None]]) -> dict[tuple[str, str], Series]:
    """Group the client ops' (invoke, completion) pairs by (f, outcome); an invoke with no completion
    is ``info`` (outcome unknown)."""
    series: dict[tuple[str, str], Series] = defaultdict(Series)
    for invoke, completion in client_pairs:
        if completion is None:
            series[(str(invoke.get("f")), INFO)].unfinished_starts.append(invoke["time"])
            continue
        entry = series[(str(invoke.get("f")), completion["type"])]
        entry.starts.append(invoke["time"])
        entry.ends.append(completion["time"])
    return dict(series)


def quantiles(values: np.ndarray, qs: tuple[float, ...] = QUANTILES) -> dict[str, float]:
    """Nearest-rank quantiles: for q, the smallest value with at least q of the values at or below it."""
    if len(values) == 0:
        return {}
    ordered = np.sort(values)
    found = {}
    for q in qs:
        # The epsilon keeps 0.95 * 100 = 95.00000000000001 from rounding up to the 96th value.
        rank = max(1, math.ceil(q * len(ordered) - 1e-9))
        found[str(q) if q < 1 else "1"] = round(float(ordered[rank - 1]), 3)
    return found


def check(test: dict[str, Any], history: list[Op], run_dir: Path | None,
          index: HistoryIndex | None = None) -> dict[str, Any]:
    """Latency quantiles (ms) and rates (ops/s) per f; writes the two plots into ``run_dir`` when given."""
    index = HistoryIndex(history) if index is None else index
    series = collect(index.client_pairs)
    if not series:
        return {"valid": "unknown", "reason": "no client operations", "latencies": {}, "rates": {}, "files": []}
    latencies: dict[str, dict[str, Any]] = defaultdict(dict)
    for (f, outcome), entry in sorted(series.items()):
        summary: dict[str, Any] = {"count": entry.count, "quantiles": quantiles(entry.latencies_ms())}
        if entry.unfinished_starts:
            summary["unfinished"] = len(entry.unfinished_starts)  # counted, but they have no latency
        latencies[f][outcome] = summary
    first = min(min(entry.starts + entry.unfinished_starts) for entry in series.values())
    last = max(max(entry.ends + entry.unfinished_starts) for entry in series.values())
    duration_s = (last - first) / NS_PER_S
    counts: dict[str, int] = defaultdict(int)
    for (f, _), entry in series.items():
        counts[f] += entry.count
    rates = {f: (round(count / duration_s, 3) if duration_s > 0 else None) for f, count in sorted(counts.items())}
    result: dict[str, Any] = {"valid": True, "latencies": dict(latencies), "rates": rates,
                              "duration_s": round(duration_s, 3), "files": []}
    if run_dir is not None:
        shading = _shading(index)
        result["points"] = _plot_latencies(series, shading, run_dir / LATENCY_FILE)
        _plot_rates(series, shading, run_dir / RATE_FILE)
        result["files"] = [LATENCY_FILE, RATE_FILE]
    return result


def _shading(index: HistoryIndex) -> list[tuple[str, float, float]]:
    """``(label, start_s, end_s)`` of every fault interval, then the convergence polling phase."""
    bands = [(fault, start / NS_PER_S, end / NS_PER_S)
             for fault, start, end in nemesis_intervals(index.ops_of(NEMESIS), end_time=index.end)]
    polls = [op["time"] for op in index.ops_of(CONVERGENCE) if "time" in op]
    if polls:
        bands.append(("convergence polling", min(polls) / NS_PER_S, max(polls) / NS_PER_S))
    return bands


def _figure() -> tuple[Figure, Any]:
    """A figure on Agg and its axes, made with matplotlib's object API: no pyplot (importing it was a
    tenth of ``dynacheck analyze``), no display and no GUI event loop, so it runs on test hosts and CI."""
    figure = Figure(figsize=(11, 5.5))
    FigureCanvasAgg(figure)
    return figure, figure.subplots()


def _shade(axes: Any, bands: list[tuple[str, float, float]]) -> None:
    """Shade each band; every kind gets one colour and one legend entry, however many intervals."""
    colours = dict(FAULT_COLOURS)
    spare = iter(SPARE_FAULT_COLOURS * 4)
    labelled: set[str] = set()
    for label, start, end in bands:
        if label == "convergence polling":
            colour, hatch = "#CCCCCC", "//"
        else:
            colour, hatch = colours.setdefault(label, next(spare, "#DDDDDD")), None
        axes.axvspan(start, max(end, start + 1e-3), color=colour, alpha=0.18, hatch=hatch, lw=0,
                     label=None if label in labelled else label, zorder=0)
        labelled.add(label)


def _finish(fig: Any, axes: Any, path: Path) -> None:
    axes.grid(True, which="major", alpha=0.3)
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", markerscale=3, frameon=False)
    fig.savefig(path, dpi=100)


def _plot_latencies(series: dict[tuple[str, str], Series], bands: list[tuple[str, float, float]],
                    path: Path) -> dict[str, Any]:
    """Scatter latency over time; returns how many points were drawn of how many."""
    fig, axes = _figure()
    fig.subplots_adjust(left=0.08, right=0.78, bottom=0.1, top=0.92)
    _shade(axes, bands)
    markers = _styles(series, MARKERS)
    total = sum(len(entry.starts) for entry in series.values())
    cap = _point_cap([len(entry.starts) for entry in series.values()], MAX_POINTS)
    shown = 0
    for (f, outcome), entry in _drawing_order(series):
        if not entry.starts:
            continue
        stride = max(1, math.ceil(len(entry.starts) / cap))
        times = np.asarray(entry.starts[::stride], dtype=np.int64) / NS_PER_S
        # A zero latency has no place on a log axis: draw it at 1 µs instead of dropping it.
        values = np.maximum(entry.latencies_ms()[::stride], 1e-3)
        shown += len(times)
        axes.plot(times, values, linestyle="none", marker=markers[f], markersize=2, alpha=0.7,
                  color=OUTCOME_COLOURS.get(outcome, "#777777"), label=f"{f} {outcome}", rasterized=True)
    axes.set_yscale("log")
    axes.set_xlabel("time (s)")
    axes.set_ylabel("latency (ms)")
    note = f" (every k-th op of large series: {shown} of {total} shown)" if shown < total else ""
    axes.set_title(f"Latency of client operations{note}", fontsize="medium")
    _finish(fig, axes, path)
    return {"shown": shown, "total": total, "downsampled": shown < total}


def _plot_rates(series: dict[tuple[str, str], Series], bands: list[tuple[str, float, float]], path: Path) -> None:
    """Completions per second (unfinished ops at their invocation) per f and outcome, in fixed buckets."""
    fig, axes = _figure()
    fig.subplots_adjust(left=0.08, right=0.78, bottom=0.1, top=0.92)
    _shade(axes, bands)
    styles = _styles(series, LINE_STYLES)
    events = {key: np.asarray(entry.ends + entry.unfinished_starts, dtype=np.int64) / NS_PER_S
              for key, entry in series.items()}
    end = max(float(times.max()) for times in events.values())
    # One-second buckets, coarser for long runs so a plot never has more than ~300 of them.
    bucket = max(1.0, math.ceil(end / 300))
    edges = np.append(np.arange(0.0, end, bucket), end)
    if len(edges) > 2 and edges[-1] - edges[-2] < bucket / 2:
        # A sliver of a last bucket would show a dip (or a spike): merge it into the one before.
        edges = np.delete(edges, -2)
    widths = np.maximum(np.diff(edges), 1e-9)
    for (f, outcome), _ in _drawing_order(series):
        counts, _ = np.histogram(events[(f, outcome)], bins=edges)
        axes.stairs(counts / widths, edges, baseline=None, linestyle=styles[f], linewidth=1.2,
                    color=OUTCOME_COLOURS.get(outcome, "#777777"), label=f"{f} {outcome}")
    axes.set_xlabel("time (s)")
    axes.set_ylabel(f"throughput (ops/s, {bucket:g} s buckets)")
    axes.set_title("Throughput of client operations", fontsize="medium")
    _finish(fig, axes, path)


def _point_cap(sizes: list[int], budget: int) -> int:
    """The largest per-series cap keeping the total within ``budget`` (water-filling): series smaller
    than the cap are drawn whole, so rare outcomes never vanish from the plot."""
    remaining, left = budget, len(sizes)
    for size in sorted(sizes):
        if size * left > remaining:
            return max(1, remaining // left)
        remaining -= size
        left -= 1
    return max(sizes, default=1)


def _drawing_order(series: dict[tuple[str, str], Series]) -> list[tuple[tuple[str, str], Series]]:
    """Ok first and failures last, so the many oks never bury the rare failures."""
    rank = {OK: 0, INFO: 1, FAIL: 2}
    return sorted(series.items(), key=lambda item: (rank.get(item[0][1], 3), item[0][0]))


def _styles(series: dict[tuple[str, str], Series], choices: tuple[str, ...]) -> dict[str, str]:
    """One marker or line style per op type, stable across both plots."""
    kinds = sorted({f for f, _ in series})
    return {f: choices[index % len(choices)] for index, f in enumerate(kinds)}
