"""Structured logs: one compact JSON object per line, written through twisted.logger.

Each line has ``time``, ``level``, ``namespace``, the formatted ``message``, every structured field
that is a plain value (``key``, ``acks``, ``node`` ...), and ``traceback`` for failures.
"""

from __future__ import annotations

import json
from typing import IO, Any

from twisted.logger import FilteringLogObserver, LogLevel, LogLevelFilterPredicate, formatEvent, globalLogBeginner

_PLAIN = (str, int, float, bool, type(None))


def event_as_record(event: dict[str, Any]) -> dict[str, Any]:
    """The JSON-ready form of one twisted.logger event."""
    record: dict[str, Any] = {
        "time": round(event.get("log_time", 0.0), 6),
        "level": event["log_level"].name if "log_level" in event else "info",
        "namespace": event.get("log_namespace", "-"),
        "message": formatEvent(event),
    }
    for name, value in event.items():
        if name.startswith("log_") or name in record or name in ("format", "message", "system", "time"):
            continue
        if isinstance(value, _PLAIN):
            record[name] = value
        elif isinstance(value, bytes):
            record[name] = value.decode("utf-8", errors="backslashreplace")
    failure = event.get("log_failure")
    if failure is not None:
        record["traceback"] = failure.getTraceback()
    return record


def json_lines_observer(stream: IO[str]):
    """An observer writing ``event_as_record`` lines to ``stream``."""

    def observe(event: dict[str, Any]) -> None:
        stream.write(json.dumps(event_as_record(event), default=repr) + "\n")
        stream.flush()

    return observe


def start_logging(stream: IO[str], level: str) -> None:
    """Route every log event at ``level`` or above to ``stream`` as JSON lines."""
    predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.levelWithName(level))
    observer = FilteringLogObserver(json_lines_observer(stream), [predicate])
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False, discardBuffer=True)
