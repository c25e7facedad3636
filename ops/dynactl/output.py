"""How dynactl speaks: tables for people, one JSON document for scripts, CONTRACT exit codes."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

import click

EXIT_OK, EXIT_NO, EXIT_USAGE, EXIT_INTERNAL = 0, 1, 2, 3


class Output:
    """Renders results in the chosen format (``table`` or ``json``)."""

    def __init__(self, fmt: str = "table"):
        self.format = fmt

    @property
    def json(self) -> bool:
        return self.format == "json"

    def document(self, data: Any, table: Sequence[Sequence[Any]] | None = None,
                 headers: Sequence[str] | None = None, text: str | None = None) -> None:
        """Print ``data`` as JSON, or as a table / text for people."""
        if self.json:
            click.echo(json.dumps(data, indent=2, sort_keys=True))
            return
        if text is not None:
            click.echo(text)
        if table is not None:
            click.echo(render_table(headers or [], table))

    def fail(self, code: int, message: str, **details: Any) -> NoReturn:
        """Report an error on stderr (and as JSON on stdout in json mode), then exit with ``code``."""
        click.echo(f"dynactl: {message}", err=True)
        if self.json:
            click.echo(json.dumps({"error": message, **details}, indent=2, sort_keys=True))
        sys.exit(code)


def render_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain aligned text table."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))] if cells and cells[0] else []
    lines = []
    for index, row in enumerate(cells):
        if not row:
            continue
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)).rstrip())
        if index == 0 and headers:
            lines.append("  ".join("-" * width for width in widths))
    return "\n".join(lines)


def show_value(value: bytes) -> str:
    """A value for a terminal: text when it is printable UTF-8, else base64 marked as such."""
    try:
        text = value.decode("utf-8")
        if text.isprintable():
            return text
    except UnicodeDecodeError:
        pass
    import base64

    return "base64:" + base64.b64encode(value).decode("ascii")
