"""Coalesced, write-through sends for Twisted TCP transports.

``transport.write`` only queues: the bytes go out on the next reactor turn, after an
``epoll_ctl`` to watch for writability, a wake-up, the ``send`` and another ``epoll_ctl`` to stop
watching (strace under load: two ``epoll_ctl`` per ``send``). Sending at once instead costs one
``send`` per message, and a node answering many requests per turn sends many small messages on the
same connection. ``Coalescer`` gathers what a reactor turn writes to each connection and sends it
with one ``send`` when the turn's events are done (a ``callLater(0)``, which runs before the next
poll), queueing in Twisted only what the kernel did not take, so order is preserved.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import tcp
from twisted.internet.interfaces import IReactorTime


def write_through(transport: Any, data: bytes) -> None:
    """Send ``data`` now if the transport has nothing queued, else queue it behind the rest.
    Only a plain TCP connection is written to directly: a TLS transport forwards attribute
    lookups (``socket`` among them) to the TCP connection under it, whose socket carries the
    encrypted stream."""
    # A lost connection has no socket attribute any more (Twisted deletes it): then write() drops.
    sock = getattr(transport, "socket", None) if isinstance(transport, tcp.Connection) else None
    if (sock is None or getattr(transport, "dataBuffer", b"x") or getattr(transport, "_tempDataBuffer", True)
            or not getattr(transport, "connected", False) or getattr(transport, "disconnecting", True)):
        transport.write(data)
        return
    try:
        sent = sock.send(data)
    except (BlockingIOError, InterruptedError):
        sent = 0
    except OSError:
        transport.write(data)  # Twisted notices the broken connection and reports it
        return
    if sent < len(data):
        transport.write(data[sent:])


class Coalescer:
    """Gathers each connection's writes during a reactor turn and sends them together after it."""

    def __init__(self, clock: IReactorTime):
        self._clock = clock
        self._pending: dict[Any, list[bytes]] = {}
        self._scheduled = False

    def write(self, transport: Any, data: bytes) -> None:
        """Queue ``data`` for ``transport`` until the end of this turn."""
        chunks = self._pending.get(transport)
        if chunks is None:
            self._pending[transport] = [data]
        else:
            chunks.append(data)
        if not self._scheduled:
            self._scheduled = True
            self._clock.callLater(0, self.flush)

    def send_now(self, transport: Any) -> None:
        """Send what is queued for ``transport`` at once (before the connection is closed: a close
        from a timer would otherwise reach the socket before the end-of-turn flush)."""
        chunks = self._pending.pop(transport, None)
        if chunks:
            write_through(transport, b"".join(chunks))

    def flush(self) -> None:
        """Send everything queued."""
        self._scheduled = False
        pending, self._pending = self._pending, {}
        for transport, chunks in pending.items():
            write_through(transport, chunks[0] if len(chunks) == 1 else b"".join(chunks))


class DirectWriter:
    """Writes at once (tests, and anything without a reactor turn to wait for)."""

    @staticmethod
    def write(transport: Any, data: bytes) -> None:
        write_through(transport, data)

    @staticmethod
    def send_now(transport: Any) -> None:
        """Nothing is ever queued."""
