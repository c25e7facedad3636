"""``dynacheck serve``: the store as web pages (Jepsen's ``lein run serve``), with twisted.web.

``/`` lists every run with its verdict; ``/<test>/`` the runs of one test; ``/<test>/<run>/`` one run:
its verdict, each checker's summary, the test options, the plots and graphs inline, links to the
timeline, history, results and node logs. Files of a run are served as they are, but never from
outside the store: unsafe path segments (``..``, dotfiles, embedded slashes) are refused and a
symlink whose target leaves the store is not followed.
"""

from __future__ import annotations

import html
import json
import os
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from twisted.web import pages, static
from twisted.web.resource import IResource, Resource
from twisted.web.server import Site
from twisted.web.util import redirectTo

from dynacheck.store import LATEST, RUN_NAME, TIMESTAMP_FORMAT, RunSummary, list_runs, run_verdict

CSS = """
body { font: 14px sans-serif; margin: 16px 24px; color: #222; }
table { border-collapse: collapse; margin: 8px 0 16px 0; }
td, th { border: 1px solid #ccc; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
.verdict { font-weight: bold; padding: 1px 8px; border-radius: 3px; color: #fff; }
.valid { background: #2E8B57; } .invalid { background: #D7263D; }
.unknown { background: #E08E0B; } .incomplete { background: #888; }
img { max-width: 100%; border: 1px solid #ddd; margin: 4px 0; }
.hint { color: #555; } .error { color: #D7263D; white-space: pre-wrap; }
code { background: #f3f3f3; padding: 0 3px; }
"""
PLOTS = ("latency-raw.png", "rate.png")
LINKS = ("timeline.html", "history.jsonl", "results.json", "test.json")
#: Logs and JSON are shown as text: a history value like "<script>" must never be served as HTML.
TEXT_TYPES = {".jsonl": "text/plain; charset=utf-8", ".log": "text/plain; charset=utf-8",
              ".json": "application/json", ".txt": "text/plain; charset=utf-8", ".dot": "text/plain; charset=utf-8"}
SUMMARY_CHARS = 160


def make_site(store: Path, reactor: Any = None) -> Site:
    """The twisted.web site serving ``store`` (``reactor`` for tests; the global one by default)."""
    site = Site(StoreIndex(store), reactor=reactor) if reactor is not None else Site(StoreIndex(store))
    site.displayTracebacks = False  # a traceback would show the server's paths to any visitor
    return site


def serve(store: Path, host: str = "127.0.0.1", port: int = 8080, echo: Callable[[str], None] | None = None) -> None:
    """Serve ``store`` on ``host:port`` until interrupted (runs the global reactor: blocking); ``echo``
    is told the address actually bound (useful with port 0)."""
    from twisted.internet import reactor

    listening = reactor.listenTCP(port, make_site(store), interface=host)
    if echo is not None:
        echo(f"dynacheck: serving {store} at http://{host}:{listening.getHost().port}/")
    reactor.run()


def safe_segment(segment: bytes) -> str | None:
    """A path segment as text when it can only name an entry of its directory, else None."""
    try:
        text = segment.decode("utf-8")
    except UnicodeDecodeError:
        return None
    # Twisted unquotes each segment after splitting on "/", so "%2F" arrives as a slash inside one.
    if not text or text.startswith(".") or any(char in text for char in "/\\\x00"):
        return None
    return text


def inside(root: Path, path: Path) -> bool:
    """True when ``path``, symlinks resolved, is ``root`` or below it (``root`` already resolved)."""
    real = os.path.realpath(path)
    return os.path.commonpath([str(root), real]) == str(root)


def not_found() -> IResource:
    """The one 404 page, escaped by twisted.web.pages (the old NoResource is not)."""
    return pages.notFound("Not found", "There is no such run or file in the store.")


class StoreFile(static.File):
    """A static file or directory of the store that refuses to lead outside it."""

    def __init__(self, path: Path | str, root: Path):
        super().__init__(str(path), defaultType="application/octet-stream")
        self.root = root
        self.contentTypes = {**static.File.contentTypes, **TEXT_TYPES}
        self.childNotFound = not_found()

    def getChild(self, path: bytes, request: Any) -> IResource:
        if path and safe_segment(path) is None:
            return not_found()
        child = super().getChild(path, request)
        if isinstance(child, static.File) and not inside(self.root, Path(child.path)):
            return pages.forbidden("Forbidden", "That link leads outside the store.")
        return child

    def createSimilarFile(self, path: str) -> StoreFile:
        return StoreFile(path, self.root)

    def render_GET(self, request: Any) -> Any:
        request.setHeader(b"x-content-type-options", b"nosniff")
        return super().render_GET(request)


class StoreIndex(Resource):
    """``/``: every run, newest first; children are the tests, ``latest`` redirects to the newest run."""

    def __init__(self, store: Path):
        super().__init__()
        self.store = store
        self.root = Path(os.path.realpath(store))

    def getChild(self, path: bytes, request: Any) -> IResource:
        if path == b"":
            return self
        name = safe_segment(path)
        if name == LATEST:
            return self._latest()
        test_dir = self.store / name if name is not None else None
        if test_dir is None or test_dir.is_symlink() or not test_dir.is_dir() or not inside(self.root, test_dir):
            return not_found()
        return TestRuns(self, name)

    def _latest(self) -> IResource:
        link = self.store / LATEST
        target = Path(os.path.realpath(link))
        if not link.is_symlink() or not inside(self.root, target) or not target.is_dir():
            return not_found()
        relative = target.relative_to(self.root).parts
        if len(relative) != 2:
            return not_found()
        return _Redirect("/" + "/".join(quote(part) for part in relative) + "/")

    def render_GET(self, request: Any) -> bytes:
        return _page(request, "dynacheck runs", self.index_body(list_runs(self.store), "All runs"))

    def index_body(self, runs: list[RunSummary], heading: str) -> str:
        """The table of ``runs``, or a hint on how to make one."""
        parts = [f"<h1>{_e(heading)}</h1>", f'<p class="hint">Store: <code>{_e(self.store)}</code></p>']
        if not runs:
            state = "has no runs yet" if self.store.is_dir() else "does not exist yet"
            parts.append(f'<p class="hint">The store {state}. Make a run with '
                         "<code>dynacheck run --local 3 --workload cart</code>, then reload.</p>")
            return "\n".join(parts)
        rows = [f'<tr><td><a href="{_href("", run.test_name, "")}">{_e(run.test_name)}</a></td>'
                f"<td>{_e(_when(run.timestamp))}</td><td>{_verdict(run.valid)}</td>"
                f'<td><a href="{_href("", run.test_name, run.timestamp, "")}">{_e(run.timestamp)}</a></td></tr>'
                for run in runs]
        parts.append("<table><tr><th>test</th><th>started</th><th>verdict</th><th>run</th></tr>")
        parts += rows
        parts.append("</table>")
        return "\n".join(parts)


class TestRuns(Resource):
    """``/<test>/``: the runs of one test; children are its run directories."""

    def __init__(self, index: StoreIndex, test_name: str):
        super().__init__()
        self.index, self.test_name = index, test_name

    def getChild(self, path: bytes, request: Any) -> IResource:
        if path == b"":
            return self
        name = safe_segment(path)
        run_dir = self.index.store / self.test_name / name if name is not None and RUN_NAME.match(name) else None
        if run_dir is None or run_dir.is_symlink() or not run_dir.is_dir() or not inside(self.index.root, run_dir):
            return not_found()
        return RunPage(self.index.root, self.test_name, run_dir)

    def render_GET(self, request: Any) -> bytes:
        runs = [run for run in list_runs(self.index.store) if run.test_name == self.test_name]
        body = self.index.index_body(runs, f"Runs of {self.test_name}") + '<p><a href="/">all runs</a></p>'
        return _page(request, f"dynacheck: {self.test_name}", body)


class RunPage(Resource):
    """``/<test>/<run>/``: one run's page; every other path below it is a file of the run."""

    def __init__(self, root: Path, test_name: str, run_dir: Path):
        super().__init__()
        self.root, self.test_name, self.run_dir = root, test_name, run_dir

    def getChild(self, path: bytes, request: Any) -> IResource:
        if path == b"":
            return self
        return StoreFile(self.run_dir, self.root).getChild(path, request)

    def render_GET(self, request: Any) -> bytes:
        if not request.path.endswith(b"/"):
            # The page links to its files relatively: without the slash they would resolve one level up.
            return redirectTo(request.path + b"/", request)
        return _page(request, f"{self.test_name} {self.run_dir.name}", self.body())

    def body(self) -> str:
        """The run page's HTML body."""
        test = _load_json(self.run_dir / "test.json")
        results = _load_json(self.run_dir / "results.json")
        crumbs = f'<a href="/">all runs</a> › <a href="{_href("", self.test_name, "")}">{_e(self.test_name)}</a>'
        parts = [f"<p>{crumbs}</p>",
                 f"<h1>{_e(self.test_name)} {_e(_when(self.run_dir.name))} {_verdict(run_verdict(self.run_dir))}</h1>"]
        links = [f'<a href="{_href(name)}">{_e(name)}</a>' for name in LINKS if (self.run_dir / name).is_file()]
        parts.append(f"<p>{' · '.join(links) or 'no files yet'}</p>")
        parts.append(self._checkers(results))
        parts.append(self._options(test))
        parts += [f'<h2>{_e(name)}</h2><img src="{_href(name)}" alt="{_e(name)}">'
                  for name in PLOTS if (self.run_dir / name).is_file()]
        parts.append(self._graphs())
        parts.append(self._logs())
        return "\n".join(part for part in parts if part)

    def _checkers(self, results: Any) -> str:
        if not isinstance(results, dict):
            return ('<p class="hint">No results.json: the run is incomplete (it crashed or is still '
                    f"running). Re-check it with <code>dynacheck analyze {_e(self.run_dir)}</code>.</p>")
        rows = []
        for name, result in (results.get("checkers") or {}).items():
            result = result if isinstance(result, dict) else {"valid": "unknown", "error": repr(result)}
            error = f'<div class="error">{_e(_short(result["error"]))}</div>' if result.get("error") else ""
            rows.append(f"<tr><td>{_e(name)}</td><td>{_verdict(result.get('valid'))}</td>"
                        f"<td>{_e(summarise(result))}{error}</td></tr>")
        return ("<h2>Checkers</h2><table><tr><th>checker</th><th>valid</th><th>summary</th></tr>"
                + "".join(rows) + "</table>")

    def _options(self, test: Any) -> str:
        if not isinstance(test, dict):
            return '<p class="hint">No test.json.</p>'
        rows = "".join(f"<tr><td>{_e(key)}</td><td>{_e(_short(value))}</td></tr>" for key, value in test.items())
        return f"<h2>Test options</h2><table>{rows}</table>"

    def _graphs(self) -> str:
        graphs = self.run_dir / "graphs"
        if not graphs.is_dir():
            return ""
        parts = ["<h2>Graphs</h2>"]
        for entry in sorted(graphs.iterdir()):
            if entry.name.startswith(".") or not entry.is_file():
                continue
            href = _href("graphs", entry.name)
            if entry.suffix == ".png":
                parts.append(f'<h3>{_e(entry.name)}</h3><img src="{href}" alt="{_e(entry.name)}">')
            else:
                parts.append(f'<p><a href="{href}">{_e(entry.name)}</a></p>')
        return "\n".join(parts)

    def _logs(self) -> str:
        nodes = self.run_dir / "nodes"
        if not nodes.is_dir():
            return ""
        items = []
        for node in sorted(nodes.iterdir()):
            if node.name.startswith(".") or not node.is_dir():
                continue
            files = [f'<a href="{_href("nodes", node.name, entry.name)}">{_e(entry.name)}</a>'
                     for entry in sorted(node.iterdir()) if entry.is_file() and not entry.name.startswith(".")]
            items.append(f"<li>{_e(node.name)}: {' · '.join(files) or 'no logs'}</li>")
        return f"<h2>Node logs</h2><ul>{''.join(items)}</ul>"


def summarise(result: dict[str, Any]) -> str:
    """A checker result's key counts in one line: numbers and short strings as they are, lists by their
    length, flat dicts of numbers inline; deeper evidence stays in results.json."""
    facts = []
    for key, value in result.items():
        if key in ("valid", "error", "trace"):
            continue
        if isinstance(value, int | float) or (isinstance(value, str) and len(value) <= 60):  # bools are ints
            facts.append(f"{key}: {value}")
        elif isinstance(value, list):
            facts.append(f"{key}: {len(value)}")
        elif isinstance(value, dict) and value and all(isinstance(item, int | float) for item in value.values()):
            facts.append(f"{key}: " + " ".join(f"{name}={item}" for name, item in value.items()))
    return _short(", ".join(facts)) if len(facts) < 12 else _short(", ".join(facts[:12]) + ", …")


class _Redirect(Resource):
    """``/latest/<rest>`` to ``<location><rest>``: the newest run's page or any file of it."""

    isLeaf = True

    def __init__(self, location: str):
        super().__init__()
        self.location = location

    def render_GET(self, request: Any) -> bytes:
        rest = "/".join(quote(segment.decode("utf-8", "replace"), safe="") for segment in request.postpath)
        return redirectTo((self.location + rest).encode("ascii"), request)


def _page(request: Any, title: str, body: str) -> bytes:
    request.setHeader(b"content-type", b"text/html; charset=utf-8")
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
            f"<style>{CSS}</style></head><body>\n{body}\n</body></html>").encode()


def _verdict(valid: Any) -> str:
    label = ("valid" if valid else "invalid") if isinstance(valid, bool) else str(valid)
    css = label if label in ("valid", "invalid", "incomplete") else "unknown"
    return f'<span class="verdict {css}">{_e(label)}</span>'


def _when(timestamp: str) -> str:
    stamp, _, suffix = timestamp.partition("-")
    try:
        text = datetime.strptime(stamp, TIMESTAMP_FORMAT).strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return timestamp
    return f"{text} (#{suffix})" if suffix else text


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= SUMMARY_CHARS else text[:SUMMARY_CHARS] + "…"


def _href(*parts: str) -> str:
    """A link made of path parts, each URL-quoted, then escaped for an attribute; a leading ``""`` makes
    it absolute and a trailing one ends it with a slash."""
    return _e("/".join(quote(part, safe="") for part in parts))


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)
