"""graphs: pictures of the version graphs worth a look, beside the fault timeline.

The causality checker's per-key version graph (Dynamo §4.4: versions and the writes that superseded
them) drawn for up to five keys — those with anomalies first, then those with the most final siblings
or versions — to ``graphs/<key>.png``: the last ``MAX_VERSIONS`` versions left to right in causal then
write order, concurrent siblings on lanes of their own (like ``git log --graph``), coloured by what
became of them; below, the faults (Jepsen's nemesis intervals) with this key's writes marked. Drawn
with matplotlib's object API on Agg, so nothing needs a display. Drawing never changes the verdict.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: runs on test hosts and CI with no display

import networkx as nx  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from dynacheck.checkers.causality import (  # noqa: E402
    KeyVersions,
    analysed,
    build_graph,
    context_bound,
    dot_name,
    interesting_keys,
)
from dynacheck.history import (  # noqa: E402
    NEMESIS,
    HistoryIndex,
    Op,
    gc_paused,
    nemesis_intervals,
)

MAX_KEYS = 5
MAX_VERSIONS = 150
#: Status -> colour, in the order the legend lists them; the first that applies wins.
COLOURS = {"anomaly": "#c51b7d", "dropped": "#d62728", "final": "#2ca02c", "acked": "#1f77b4",
           "info": "#ff9f1c"}
LABELS = {"anomaly": "anomaly", "dropped": "dropped (acked, no descendant)", "final": "final sibling",
          "acked": "acknowledged write", "info": "seen, never acknowledged"}


def safe_name(key: str) -> str:
    """A file name for ``key``: anything but letters, digits, ``.``, ``_`` and ``-`` becomes ``_``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", key).strip("._")[:100] or "key"


def status(kv: KeyVersions, dot: tuple[str, int]) -> str:
    """What became of a version: anomaly, dropped, final, acked or info (seen but never acknowledged)."""
    version = kv.versions[dot]
    if dot in kv.anomalous:
        return "anomaly"
    if dot in kv.dropped:
        return "dropped"
    if version.final:
        return "final"
    return "acked" if version.acked else "info"


def lanes(graph: nx.DiGraph, order: list[str], max_lanes: int = 12) -> dict[str, int]:
    """A lane (row) per version, like ``git log --graph``: a version continues the lane of a version it
    superseded, merges free the other lanes, and a concurrent sibling takes a finished lane or a new one."""
    tips: list[str | None] = []
    placed: set[str] = set()
    lane_of: dict[str, int] = {}

    def free(lane: int, branching: bool) -> bool:
        # A branch must not share a lane with a leaf it is concurrent with (sibling tips stay apart);
        # versions with no parent (blind writes) may follow anything that is finished.
        tip = tips[lane]
        if tip is None:
            return True
        successors = list(graph.successors(tip))
        return (bool(successors) or not branching) and all(successor in placed for successor in successors)

    for name in order:
        parents = [lane for lane, tip in enumerate(tips) if tip is not None and graph.has_edge(tip, name)]
        if parents:
            lane = parents[0]
            for other in parents[1:]:
                tips[other] = None
        else:
            branching = graph.in_degree(name) > 0
            lane = next((lane for lane in range(len(tips)) if free(lane, branching)), len(tips))
            if lane == len(tips):
                if len(tips) >= max_lanes:
                    lane = len(placed) % max_lanes
                else:
                    tips.append(None)
        tips[lane] = name
        lane_of[name] = lane
        placed.add(name)
    return lane_of


def draw_key(kv: KeyVersions, faults: list[tuple[str, int, int]], path: Path) -> None:
    """Draw one key's version graph (its last ``MAX_VERSIONS`` versions) and the fault timeline to ``path``."""
    ordered = sorted(kv.versions.values(), key=lambda v: (v.time, v.dot))
    shown = ordered[-MAX_VERSIONS:]
    graph = build_graph(kv).subgraph(dot_name(v.dot) for v in shown)
    try:  # causal order, time breaking ties: every edge points right even when acks came out of order
        names = list(nx.lexicographical_topological_sort(graph, key=lambda name: graph.nodes[name]["time"]))
    except nx.NetworkXUnfeasible:  # a cycle (reported as an anomaly): plain time order
        names = [dot_name(v.dot) for v in shown]
    shown = [kv.versions[graph.nodes[name]["dot"]] for name in names]
    lane_of = lanes(graph, names)
    rows = max(lane_of.values(), default=0) + 1
    positions = {name: (rank, -lane_of[name]) for rank, name in enumerate(names)}
    statuses = [status(kv, graph.nodes[name]["dot"]) for name in graph.nodes]

    figure = Figure(figsize=(max(8.0, min(22.0, 0.11 * len(shown) + 3)), 4.0 + 0.3 * rows))
    FigureCanvasAgg(figure)
    graph_axes, time_axes = figure.subplots(2, 1, gridspec_kw={"height_ratios": [2 + 0.3 * rows, 1.2]})
    figure.subplots_adjust(left=0.08, right=0.98, top=0.88, bottom=0.1, hspace=0.45)
    # Plain lines, not arrow patches (ten times cheaper to draw): edges run from the superseded
    # version to the one that superseded it, left to right since versions are in write order.
    nx.draw_networkx_edges(graph, positions, ax=graph_axes, arrows=False, width=0.7, edge_color="#999999")
    nx.draw_networkx_nodes(graph, positions, ax=graph_axes, node_size=36,
                           node_color=[COLOURS[s] for s in statuses], linewidths=0)
    if len(shown) <= 40:
        nx.draw_networkx_labels(graph, {n: (x, y + 0.25) for n, (x, y) in positions.items()}, ax=graph_axes,
                                font_size=6)
    graph_axes.set_yticks([])
    graph_axes.set_ylim(-rows + 0.4, 0.8)
    graph_axes.set_xlim(-1, max(len(shown), 6))
    ticks = list(range(0, len(shown), max(1, len(shown) // 8)))
    graph_axes.set_xticks(ticks, [f"{shown[i].time / 1e9:.3f}s" for i in ticks], fontsize=7)
    graph_axes.tick_params(bottom=True, labelbottom=True)
    graph_axes.set_xlabel("versions in causal, then write order (time written); lines: superseded -> superseder",
                          fontsize=8)
    anomalies = {kind: len(entries) for kind, entries in kv.anomalies.items() if entries}
    graph_axes.set_title(f"{kv.key}: {len(ordered)} versions ({len(shown)} shown), "
                         f"{len(kv.final_dots)} final siblings"
                         + (f"; anomalies {anomalies}" if anomalies else ""), fontsize=9, loc="left")
    figure.legend(handles=[Patch(color=COLOURS[s], label=LABELS[s]) for s in COLOURS if s in statuses],
                  fontsize=7, loc="upper right", ncols=5, frameon=False)

    kinds = sorted({fault for fault, _, _ in faults})
    for row, kind in enumerate(kinds):
        time_axes.broken_barh([(start / 1e9, (end - start) / 1e9) for fault, start, end in faults if fault == kind],
                              (row + 1 - 0.35, 0.7), color="#f4a261")
    time_axes.vlines([v.time / 1e9 for v in ordered if v.acked], -0.35, 0.35, color=COLOURS["acked"], linewidth=0.5)
    if shown:
        time_axes.axvspan(shown[0].time / 1e9, shown[-1].time / 1e9, color="#dddddd", zorder=0)
    time_axes.set_yticks(range(len(kinds) + 1), ["writes", *kinds], fontsize=7)
    time_axes.set_ylim(-0.6, len(kinds) + 0.6)
    time_axes.set_xlabel("time since the test started (s); grey: the versions drawn above", fontsize=8)
    figure.savefig(path, dpi=80)


def _chosen(test: dict[str, Any], history: list[Op], index: HistoryIndex) -> list[tuple[str, KeyVersions]]:
    """The keys to draw, with their versions: from the causality checker's own analysis (under the
    run's context bound, so what it did not judge is not drawn as an anomaly either), computed once
    when both run. Only these stay referenced while drawing: saving a PNG leaves the frames above it
    in a garbage cycle (through a traceback kept under ``savefig``), which would keep every key's
    versions alive until the next collection."""
    per_key = analysed(history, context_bound(test), index)
    return [(key, per_key[key]) for key in interesting_keys(per_key, MAX_KEYS)]


def check(test: dict[str, Any], history: list[Op], run_dir: Path | None = None,
          index: HistoryIndex | None = None) -> dict[str, Any]:
    """Draw the most interesting keys' version graphs under ``run_dir/graphs``; always valid."""
    if run_dir is None:
        return {"valid": True, "files": [], "keys": []}
    index = HistoryIndex(history) if index is None else index
    out = Path(run_dir) / "graphs"
    out.mkdir(parents=True, exist_ok=True)
    files, drawn, errors, names = [], [], {}, set()
    chosen = _chosen(test, history, index)
    with gc_paused():  # matplotlib's cycles are collected afterwards, without rescanning the history
        faults = nemesis_intervals(index.ops_of(NEMESIS), end_time=index.end)
        for key, kv in chosen:
            name = safe_name(key)
            while name in names:
                name += "_"
            names.add(name)
            try:
                draw_key(kv, faults, out / f"{name}.png")
            except Exception as exc:  # noqa: BLE001 - a picture must never hide the verdict
                errors[key] = f"{type(exc).__name__}: {exc}"
                continue
            files.append(f"graphs/{name}.png")
            drawn.append(key)
    result: dict[str, Any] = {"valid": True, "files": files, "keys": drawn}
    if errors:
        result["errors"] = errors
    return result
