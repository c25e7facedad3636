"""The live progress line of a run (stderr): elapsed time, op counts, the fault in force."""

from __future__ import annotations

import sys
import time
from typing import Any

from dynacheck.history import INFO, NEMESIS, OK, Op


class Progress:
    """The live progress line (stderr): elapsed time, op counts, the fault in force."""

    def __init__(self, time_limit: float, stream: Any = sys.stderr):
        self.time_limit, self.stream = time_limit, stream
        self.counts = {OK: 0, "fail": 0, INFO: 0}
        self.fault = "none"
        self.started = time.monotonic()
        self.shown = 0.0
        self.tty = getattr(stream, "isatty", lambda: False)()

    def say(self, message: str) -> None:
        self.stream.write(("\r\033[K" if self.tty else "") + f"dynacheck: {message}\n")
        self.stream.flush()

    def completed(self, op: Op) -> None:
        if op.get("process") == NEMESIS:
            action, _, fault = op["f"].partition("-")
            self.fault = fault if action == "start" else "none"
        elif op["type"] in self.counts:
            self.counts[op["type"]] += 1
        now = time.monotonic()
        if now - self.shown >= (0.2 if self.tty else 5.0):
            self.shown = now
            line = (f"[{now - self.started:5.0f}s/{self.time_limit:.0f}s] ok {self.counts[OK]} "
                    f"fail {self.counts['fail']} info {self.counts[INFO]} | fault: {self.fault}")
            self.stream.write(("\r\033[K" + line) if self.tty else f"dynacheck: {line}\n")
            self.stream.flush()
