"""Dedicated worker threads for blocking storage calls, lighter than Twisted's ThreadPool.

Each call is one ``SimpleQueue.put`` (C) to wake a worker and one ``callFromThread`` to deliver the
result; Twisted's pool adds context tracking and a coordinator hop per call, which showed up in
profiles of the write path. Start and stop are explicit; ``stop`` lets queued calls finish.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.python.failure import Failure

_STOP = object()


class WorkerThreads:
    """``count`` threads running submitted calls in order of submission."""

    def __init__(self, reactor: Any, count: int = 1, name: str = "dynamod-worker"):
        self._reactor = reactor
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True) for i in range(count)]
        self._started = False

    def start(self) -> None:
        """Start the threads."""
        if not self._started:
            self._started = True
            for thread in self._threads:
                thread.start()

    def stop(self) -> None:
        """Finish what is queued, then end the threads (blocks until they have)."""
        if not self._started:
            return
        for _ in self._threads:
            self._queue.put(_STOP)
        for thread in self._threads:
            thread.join()
        self._started = False

    def run(self, fn: Callable[..., Any], *args: Any) -> defer.Deferred:
        """Run ``fn(*args)`` on a worker; the Deferred fires on the reactor thread."""
        done: defer.Deferred = defer.Deferred()
        self._queue.put((fn, args, done))
        return done

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            fn, args, done = item
            try:
                result = fn(*args)
            except BaseException:  # noqa: BLE001 - delivered to the caller as a Failure
                self._reactor.callFromThread(done.errback, Failure())
            else:
                self._reactor.callFromThread(done.callback, result)
