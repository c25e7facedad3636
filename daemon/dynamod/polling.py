"""Poll until a deadline: the one loop that ``dynactl``, ``dynacheck`` and the tests share.

Blocking code that waits for the outside world (a process to exec or exit, a port to open, a node to
serve, a cluster to settle) calls ``wait_until`` instead of writing its own ``deadline = ...; while``
loop. The Twisted daemon never blocks and does not use it: it waits with ``task.LoopingCall`` and
``callLater``. The clock and the sleep are arguments, so its tests run on a fake clock and never sleep.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(probe: Callable[[], T], deadline_seconds: float, *, interval: float = 0.05,
               done: Callable[[T], bool] = bool, clock: Callable[[], float] = time.monotonic,
               sleep: Callable[[float], None] = time.sleep) -> T:
    """Call ``probe`` every ``interval`` seconds until ``done`` holds for its answer (by default:
    the answer is truthy) or ``deadline_seconds`` have passed; returns the last answer.

    ``probe`` runs at least once, and once more at the deadline itself: no sleep goes past it, so a
    condition that holds by then is seen. An exception from ``probe`` ends the wait and propagates.
    """
    deadline = clock() + deadline_seconds
    while True:
        answer = probe()
        if done(answer):
            return answer
        remaining = deadline - clock()
        if remaining <= 0:
            return answer
        sleep(min(interval, remaining))
