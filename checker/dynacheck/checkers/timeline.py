"""Jepsen's ``timeline.html``: every operation as a box in its process' column, placed by time.

A box spans from the op's invocation to its completion and is coloured by outcome (ok green, fail
red, info orange; an invoke that never completed is info and runs to the end of the page). The nemesis
has its own column, and its fault intervals are shaded across every column. A process whose op
ended ``info`` is replaced by process ``p + concurrency`` on the same worker thread; both share a
column (when ``test["concurrency"]`` is known), so the page stays as wide as the test's concurrency. The page is one
self-contained file (no scripts, no external resources) and is bounded: only the first ``MAX_OPS``
operations are drawn, which the page says. Like perf, the timeline never judges the run.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from dynacheck.history import CONVERGENCE, INFO, MONITOR, NEMESIS, HistoryIndex, Op, nemesis_intervals

MAX_OPS = 10_000
FILE = "timeline.html"
#: The page never grows past this many pixels, however long the run: the time scale shrinks instead.
MAX_HEIGHT_PX = 60_000
MAX_PX_PER_MS = 2.0
MIN_BOX_PX = 2
COLUMN_PX, GAP_PX, AXIS_PX, HEAD_PX = 64, 4, 64, 22
VALUE_CHARS = 200
FAULT_COLOURS = {"partition": "#E15759", "clock": "#76B7B2", "kill": "#9C755F", "pause": "#B07AA1",
                 "netem": "#59A14F"}
TICK_STEPS_S = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800)

STYLE = """
body { font: 13px sans-serif; margin: 0; }
header { padding: 8px 12px; border-bottom: 1px solid #ccc; }
header h1 { font-size: 18px; margin: 0 0 4px 0; }
.cap { color: #a04000; font-weight: bold; }
.legend span { display: inline-block; padding: 1px 6px; margin-right: 6px; border-radius: 3px; }
.timeline { position: relative; margin: 4px 12px; }
.col { position: absolute; top: 0; bottom: 0; background: rgba(0, 0, 0, 0.02); }
.head { position: sticky; top: 0; z-index: 3; height: 18px; background: #fff; text-align: center;
        font-weight: bold; border-bottom: 1px solid #999; overflow: hidden; white-space: nowrap; }
.op { position: absolute; left: 1px; right: 1px; z-index: 2; overflow: hidden; font-size: 10px;
      white-space: nowrap; border-radius: 2px; box-sizing: border-box; border: 1px solid rgba(0, 0, 0, 0.25); }
.op:hover { outline: 2px solid #000; z-index: 4; }
.ok { background: #6DB26D; }
.fail { background: #F08CA6; }
.info { background: #FFB347; }
.unfinished { background: repeating-linear-gradient(45deg, #FFB347, #FFB347 4px, #FFE0B0 4px, #FFE0B0 8px); }
.band { position: absolute; left: 0; right: 0; z-index: 1; opacity: 0.15; pointer-events: none; }
.fault { position: absolute; left: 0; right: 0; z-index: 1; opacity: 0.45; }
.tick { position: absolute; left: 0; width: 100%; border-top: 1px solid #bbb; font-size: 10px; color: #555; }
"""


def check(test: dict[str, Any], history: list[Op], run_dir: Path | None,
          index: HistoryIndex | None = None) -> dict[str, Any]:
    """Write ``timeline.html`` into ``run_dir`` (when given); reports how many ops it shows of how many."""
    index = HistoryIndex(history) if index is None else index
    all_ops = [(invoke, completion) for invoke, completion in index.pairs
               if invoke.get("process") not in (CONVERGENCE, MONITOR)]
    shown = all_ops[:MAX_OPS]
    result: dict[str, Any] = {"valid": True, "file": None, "ops_shown": len(shown), "ops_total": len(all_ops)}
    if run_dir is not None:
        polls = sum(1 for op in index.ops_of(CONVERGENCE) if op.get("type") == "invoke")
        page = render(test, shown, len(all_ops), nemesis_intervals(index.ops_of(NEMESIS), end_time=index.end), polls)
        (run_dir / FILE).write_text(page, encoding="utf-8")
        result["file"] = FILE
    return result


def render(test: dict[str, Any], shown: list[tuple[Op, Op | None]], total: int,
           intervals: list[tuple[str, int, int]], polls: int = 0) -> str:
    """The whole page for ``shown`` (invoke, completion) pairs; ``total`` is how many the history has."""
    end_ns = max([_end(invoke, completion, 0) for invoke, completion in shown] + [1])
    if len(shown) < total:
        # Capped: the faults are drawn as far as the shown ops go, not to the end of the run.
        intervals = [(fault, start, min(end, end_ns)) for fault, start, end in intervals if start < end_ns]
    scale = min(MAX_PX_PER_MS, MAX_HEIGHT_PX / max(end_ns / 1e6, 1e-3))  # px per ms
    concurrency = test.get("concurrency")
    column_of = _column_function(concurrency if isinstance(concurrency, int) and concurrency > 0 else None)
    members: dict[Any, list[Any]] = {}
    for invoke, _ in shown:
        processes = members.setdefault(column_of(invoke["process"]), [])
        if invoke["process"] not in processes:
            processes.append(invoke["process"])
    columns = _columns(members)
    x_of = {column: AXIS_PX + index * (COLUMN_PX + GAP_PX) for index, column in enumerate(columns)}
    ops_html: dict[Any, list[str]] = {column: [] for column in columns}
    for invoke, completion in shown:
        ops_html[column_of(invoke["process"])].append(_box(invoke, completion, end_ns, scale))
    height = HEAD_PX + round(end_ns / 1e6 * scale) + 40
    width = AXIS_PX + len(columns) * (COLUMN_PX + GAP_PX)
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>Timeline: {_e(test.get('name', 'test'))}</title><style>{STYLE}</style></head><body>",
             _header(test, len(shown), total, intervals, polls),
             f'<div class="timeline" style="height:{height}px;width:{width}px">']
    parts += _ticks(end_ns, scale)
    for fault, start, end in intervals:
        parts.append(f'<div class="band" style="{_span(start, end, scale)};background:{_colour(fault)}"></div>')
    for column in columns:
        processes = members[column]
        label = "nemesis" if column == NEMESIS else f"p{processes[0]}"
        if len(processes) > 1:
            label += f" +{len(processes) - 1}"
        head_title = "processes " + ", ".join(str(process) for process in processes[:20])
        head_title += ", …" if len(processes) > 20 else ""
        parts.append(f'<div class="col" id="{_e("col-" + str(column))}" style="left:{x_of[column]}px;'
                     f'width:{COLUMN_PX}px"><div class="head" title="{_e(head_title)}">{_e(label)}</div>')
        if column == NEMESIS:
            for fault, start, end in intervals:
                title = f"{fault}: {start / 1e9:.3f} s to {end / 1e9:.3f} s"
                parts.append(f'<div class="fault" style="{_span(start, end, scale)};background:{_colour(fault)}" '
                             f'title="{_e(title)}"></div>')
        parts += ops_html[column]
        parts.append("</div>")
    parts.append("</div></body></html>")
    return "\n".join(parts)


def _column_function(concurrency: int | None) -> Any:
    """Maps a process to its column: its worker thread (``p % concurrency``) when the concurrency is known."""
    if concurrency is None:
        return lambda process: process
    return lambda process: process % concurrency if isinstance(process, int) else process


def _columns(members: dict[Any, list[Any]]) -> list[Any]:
    """The nemesis first (it explains everything else), then client columns in numeric order."""
    clients = sorted(column for column in members if isinstance(column, int))
    others = sorted((column for column in members if not isinstance(column, int) and column != NEMESIS), key=str)
    return ([NEMESIS] if NEMESIS in members else []) + clients + others


def _end(invoke: Op, completion: Op | None, default: int) -> int:
    return completion["time"] if completion is not None else max(invoke["time"], default)


def _box(invoke: Op, completion: Op | None, end_ns: int, scale: float) -> str:
    """One op's box; an op with no completion runs to the end of the page (its outcome is unknown)."""
    outcome = completion["type"] if completion is not None else INFO
    css = outcome if outcome in ("ok", "fail", "info") else "info"
    if completion is None:
        css = "info unfinished"
    label = " ".join(str(part) for part in (invoke.get("f"), invoke.get("key")) if part is not None)
    return (f'<div class="op {css}" style="{_span(invoke["time"], _end(invoke, completion, end_ns), scale)}" '
            f'title="{_e(_title(invoke, completion))}">{_e(label)}</div>')


def _title(invoke: Op, completion: Op | None) -> str:
    """The hover text: everything one needs to find the op in history.jsonl."""
    outcome = completion["type"] if completion is not None else "info (no completion)"
    lines = [f"{invoke.get('f')} {outcome}  process {invoke.get('process')}  index {invoke.get('index')}"]
    if invoke.get("key") is not None:
        lines.append(f"key: {invoke['key']}")
    value = completion.get("value") if completion is not None and completion.get("value") is not None \
        else invoke.get("value")
    if value is not None:
        lines.append(f"value: {_truncate(value)}")
    node = (completion or {}).get("node") or invoke.get("node")
    if node is not None:
        lines.append(f"node: {node}")
    if completion is not None:
        latency = (completion["time"] - invoke["time"]) / 1e6
        lines.append(f"invoked at {invoke['time'] / 1e9:.3f} s, latency {latency:.1f} ms")
    else:
        lines.append(f"invoked at {invoke['time'] / 1e9:.3f} s, never completed")
    if completion is not None and completion.get("error") is not None:
        lines.append(f"error: {_truncate(completion['error'])}")
    return "\n".join(lines)


def _truncate(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str, separators=(",", ":"))
    return text if len(text) <= VALUE_CHARS else text[:VALUE_CHARS] + f"… ({len(text)} chars)"


def _header(test: dict[str, Any], shown: int, total: int, intervals: list[tuple[str, int, int]], polls: int) -> str:
    facts = [f"{key} {_e(_truncate(test[key]))}" for key in ("workload", "mode", "nemesis", "time-limit",
                                                               "concurrency") if test.get(key) is not None]
    parts = [f"<header><h1>{_e(test.get('name', 'test'))}</h1>", f"<p>{' · '.join(facts)}</p>"]
    if shown < total:
        parts.append(f'<p class="cap">Only the first {shown} of {total} operations are shown '
                     "(history.jsonl has them all).</p>")
    else:
        parts.append(f"<p>{total} operations.</p>")
    if polls:
        parts.append(f"<p>{polls} convergence polls after the test are not shown.</p>")
    legend = ['<span class="ok">ok</span>', '<span class="fail">fail</span>', '<span class="info">info</span>',
              '<span class="unfinished">no completion</span>']
    legend += [f'<span style="background:{_colour(fault)}">{_e(fault)}</span>'
               for fault in sorted({fault for fault, _, _ in intervals})]
    parts.append(f'<p class="legend">{"".join(legend)}</p></header>')
    return "\n".join(parts)


def _ticks(end_ns: int, scale: float) -> list[str]:
    """Horizontal rules with the time in seconds, at least ~80 px apart."""
    step = next((s for s in TICK_STEPS_S if s * 1000 * scale >= 80), TICK_STEPS_S[-1])
    ticks, index = [], 0
    while index * step * 1e9 <= end_ns:
        top = HEAD_PX + round(index * step * 1000 * scale)
        ticks.append(f'<div class="tick" style="top:{top}px">{index * step:g} s</div>')
        index += 1
    return ticks


def _span(start_ns: int, end_ns: int, scale: float) -> str:
    top = HEAD_PX + round(start_ns / 1e6 * scale)
    height = max(MIN_BOX_PX, round((end_ns - start_ns) / 1e6 * scale))
    return f"top:{top}px;height:{height}px"


def _colour(fault: str) -> str:
    return FAULT_COLOURS.get(fault, "#BAB0AC")


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)
