"""Node-to-node messaging: length-prefixed msgpack frames with request ids over TCP.

Chosen by measurement (MEASUREMENTS.md): length-prefixed msgpack carried 176k pipelined round
trips/s between two processes, against ~25k for twisted.web, and AMP caps values at 64 KiB. Frames:

* ``[0, id, op, payload]`` a request, ``[1, id, value]`` its answer, ``[2, id, [code, message]]``
  a refusal (``dynamod.net.operations``: the codes, and the operations with their schemas).

Either side of a connection may send requests. Over TLS (``identity_check`` given) the connection
counts as made only once the handshake is done and the other side's certificate names whom this
side accepts; each request is then answered knowing its ``caller``. A frame that does not decode, or one over the frame
limit, closes that connection (logged once); the node keeps serving everything else.

Frames are received in linear time: the pieces of a frame that spans reads are kept as they
arrived and joined once when the frame is whole (Twisted's ``Int32StringReceiver`` concatenates its
buffer with every read, which took 5-16 s for a 32 MiB frame arriving in 64 KiB reads), and the
frames of one read are cut from it by offset.
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Callable
from typing import Any

import msgpack
from twisted.internet import defer, error
from twisted.internet.interfaces import IHandshakeListener, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from dynamod.net.operations import (
    Code,
    PeerError,
    PeerRefusal,
    PeerTimeout,
    PeerUnavailable,
    error_payload,
)
from dynamod.net.writes import Coalescer, DirectWriter
from dynamod.security.identity import Principal
from dynamod.security.tls import peer_principal

__all__ = ["DEFAULT_MAX_FRAME", "ERROR", "REQUEST", "RESPONSE", "SILENT", "FrameError", "PeerError",
           "PeerProtocol", "PeerTimeout", "PeerUnavailable", "RequestHandler", "decode_frame", "encode_frame"]

REQUEST, RESPONSE, ERROR = 0, 1, 2

#: Default frame limit: a 1 MiB value with many siblings and their clocks still fits.
DEFAULT_MAX_FRAME = 64 * 1024 * 1024

#: The length prefix of a frame.
_PREFIX = struct.Struct("!I")


#: Why a connection ended that this side aborted for silence (the peer did not close it).
SILENT = "silent for a whole request timeout"


class FrameError(ValueError):
    """A frame that is not one of the three message shapes."""


#: ``handler(op, payload, caller) -> value or Deferred``; ``caller`` is the principal the other
#: side's certificate names (None without TLS). Raising a ``PeerRefusal`` answers the request
#: with its code, anything else with ``internal`` (logged here with its traceback).
RequestHandler = Callable[[str, Any, Principal | None], Any]

#: ``identity_check(principal) -> None if accepted, else why not`` (TLS connections only).
IdentityCheck = Callable[[Principal | None], str | None]


def encode_frame(message: list) -> bytes:
    """Pack one message."""
    return msgpack.packb(message, use_bin_type=True)


def decode_frame(frame: bytes) -> list:
    """Unpack and shape-check one message; raises ``FrameError``."""
    try:
        message = msgpack.unpackb(frame, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise FrameError(f"undecodable frame: {exc}") from exc
    if not isinstance(message, list) or not message or message[0] not in (REQUEST, RESPONSE, ERROR):
        raise FrameError("frame is not a message")
    kind = message[0]
    if kind == REQUEST and (len(message) != 4 or type(message[1]) is not int
                            or not isinstance(message[2], str)):
        raise FrameError("malformed request")
    if kind in (RESPONSE, ERROR) and (len(message) != 3 or type(message[1]) is not int):
        raise FrameError("malformed response")
    return message


@implementer(IHandshakeListener)
class PeerProtocol(Protocol):
    """One peer connection: answers requests with ``handler`` and matches responses to calls."""

    log = Logger()

    def __init__(self, handler: RequestHandler | None, clock: IReactorTime, max_frame: int = DEFAULT_MAX_FRAME,
                 writer: Coalescer | DirectWriter | None = None, identity_check: IdentityCheck | None = None):
        self.handler = handler
        self.identity_check = identity_check
        #: Whom the other side's certificate names, once the TLS handshake accepted it.
        self.caller: Principal | None = None
        self.clock = clock
        self.writer = writer or DirectWriter()
        #: The largest frame taken; a longer one closes the connection.
        self.MAX_LENGTH = max_frame
        # The start of a frame that has not fully arrived: the pieces as they came (joined once
        # when it is whole), their total size, and the size they must reach before anything can
        # be taken from them (the prefix, then the whole frame).
        self._pieces: list[bytes] = []
        self._buffered = 0
        self._needed = 0
        #: Set once this side closes the connection: nothing more it receives is read.
        self._closing = False
        self._ids = itertools.count(1)
        self._pending: dict[int, defer.Deferred] = {}
        # request id -> (deadline, timeout); one timer for the earliest deadline instead of one
        # timer per request (scheduling and cancelling a timer per message showed in profiles).
        self._deadlines: dict[int, tuple[float, float]] = {}
        self._sweep: Any = None
        #: When a frame last arrived (a connection that stays silent for a whole request timeout is
        #: taken for dead, see ``_expire_due``).
        self._last_heard = clock.seconds()
        self.on_connected: Callable[[PeerProtocol], None] | None = None
        self.on_disconnected: Callable[[PeerProtocol], None] | None = None
        #: Why the connection ended, once it has.
        self.lost_reason: str | None = None

    def connectionMade(self) -> None:
        if hasattr(self.transport, "setTcpNoDelay"):
            self.transport.setTcpNoDelay(True)
        if self.identity_check is None and self.on_connected:
            self.on_connected(self)

    def handshakeCompleted(self) -> None:
        """TLS only: accept the other side if its certificate names whom this side expects."""
        if self.identity_check is None:
            return
        principal = peer_principal(self.transport)
        problem = self.identity_check(principal)
        if problem is not None:
            self.log.warn("refused peer connection {peer}: {problem}", peer=str(self.transport.getPeer()),
                          problem=problem)
            self.lost_reason = f"refused: {problem}"
            self._close()
            return
        self.caller = principal
        if self.on_connected:
            self.on_connected(self)

    def connectionLost(self, reason: Failure = error.ConnectionDone) -> None:
        partial = self._buffered
        if partial or self._pending:
            self.log.warn("peer connection {peer} lost with {pending} requests unanswered and a "
                          "{partial}-byte partial frame: {reason}", peer=str(self.transport.getPeer()),
                          pending=len(self._pending), partial=partial, reason=reason.getErrorMessage())
        pending, self._pending = self._pending, {}
        self._deadlines.clear()
        if self._sweep is not None and self._sweep.active():
            self._sweep.cancel()
        self.lost_reason = self.lost_reason or reason.getErrorMessage()
        for waiter in pending.values():
            waiter.errback(PeerUnavailable(f"connection lost: {self.lost_reason}"))
        if self.on_disconnected:
            self.on_disconnected(self)

    def sendString(self, string: bytes) -> None:
        self.writer.write(self.transport, _PREFIX.pack(len(string)) + string)

    def lengthLimitExceeded(self, length: int) -> None:
        self.log.warn("peer {peer} sent a {length}-byte frame over the {limit}-byte limit; closing",
                      peer=str(self.transport.getPeer()), length=length, limit=self.MAX_LENGTH)
        self._close()

    def _close(self) -> None:
        """Close the connection and read nothing more from it (bytes already received are dropped)."""
        self._closing = True
        self._pieces, self._buffered = [], 0
        self.transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        if self._pieces:
            pieces = self._pieces
            pieces.append(data)
            self._buffered += len(data)
            if self._buffered < self._needed:
                return  # still partial: kept as it is, copied once when whole
            excess, prefix_only = self._buffered - self._needed, self._needed == 4
            self._pieces, self._buffered = [], 0
            if prefix_only:  # a few bytes of a prefix were waiting for the rest of it
                self._take_frames(b"".join(pieces))
                return
            # The frame is whole: its body is copied once, without its prefix or what follows it.
            pieces[0] = pieces[0][4:]
            if excess:
                pieces[-1] = data[:len(data) - excess]
            self.stringReceived(b"".join(pieces))
            if self._closing or not excess:
                return
            data = data[len(data) - excess:]
        self._take_frames(data)

    def _take_frames(self, data: bytes) -> None:
        """Hand each whole frame of ``data`` (which starts at a frame) to ``stringReceived`` and
        keep the partial one after them."""
        offset, size, limit = 0, len(data), self.MAX_LENGTH
        while size - offset >= 4:
            (length,) = _PREFIX.unpack_from(data, offset)
            if length > limit:
                self.lengthLimitExceeded(length)
                return
            end = offset + 4 + length
            if end > size:
                break
            self.stringReceived(data[offset + 4:end])
            offset = end
            if self._closing:
                return
        if offset < size:
            rest = data[offset:] if offset else data
            self._pieces, self._buffered = [rest], len(rest)
            self._needed = 4 + _PREFIX.unpack_from(rest)[0] if len(rest) >= 4 else 4

    def call(self, op: str, payload: Any, timeout: float) -> defer.Deferred:
        """Send a request; fires with the answer, or fails with PeerError/PeerTimeout/PeerUnavailable."""
        request_id = next(self._ids)
        waiter: defer.Deferred = defer.Deferred()
        self._pending[request_id] = waiter
        deadline = self.clock.seconds() + timeout
        self._deadlines[request_id] = (deadline, timeout)
        if self._sweep is None or not self._sweep.active() or deadline < self._sweep.getTime():
            self._schedule_sweep(deadline)
        self.sendString(encode_frame([REQUEST, request_id, op, payload]))
        return waiter

    def _schedule_sweep(self, when: float) -> None:
        if self._sweep is not None and self._sweep.active():
            self._sweep.cancel()
        self._sweep = self.clock.callLater(max(0.0, when - self.clock.seconds()), self._after_one_read)

    def _after_one_read(self) -> None:
        """A deadline is due: expire it only after one more pass of the reactor, so answers already
        in the socket buffer are read first. Timers run before I/O, so after a stall of this
        node's own event loop (a GC pause, a slow disk call) every deadline would otherwise expire,
        and every connection be taken for silent, with the answers waiting unread."""
        self._sweep = self.clock.callLater(0, self._expire_due)

    def _expire_due(self) -> None:
        """Fail every request past its deadline, then wait for the next deadline. When nothing at
        all arrived on the connection since an expired request was sent, the connection is taken for
        dead and aborted: after a network partition TCP would otherwise keep it, retransmitting with
        a backoff that grows to tens of seconds, and the peer would stay unreachable that long after
        the network healed (measured: 24 s after an 8 s partition). The reconnecting client then
        opens a fresh connection within its backoff (at most a second)."""
        now = self.clock.seconds()
        self._sweep = None
        expired = [rid for rid, (deadline, _) in self._deadlines.items() if deadline <= now]
        silent = False
        for request_id in expired:
            deadline, timeout = self._deadlines.pop(request_id)
            silent = silent or self._last_heard <= deadline - timeout
            waiter = self._pending.pop(request_id, None)
            if waiter is not None:
                waiter.errback(PeerTimeout(f"no answer within {timeout:.3f}s"))
        if silent and self.transport is not None and self.connected:
            self.log.info("peer connection {peer} silent for a whole request timeout: closing it",
                          peer=str(self.transport.getPeer()))
            self.lost_reason = SILENT
            self.transport.abortConnection()
            return
        if self._deadlines:
            self._schedule_sweep(min(deadline for deadline, _ in self._deadlines.values()))

    def stringReceived(self, frame: bytes) -> None:
        self._last_heard = self.clock.seconds()
        try:
            message = decode_frame(frame)
        except FrameError as exc:
            self.log.warn("closing connection from {peer}: {reason}",
                          peer=str(self.transport.getPeer()), reason=str(exc))
            self._close()
            return
        if message[0] == REQUEST:
            self._answer(message[1], message[2], message[3])
            return
        waiter = self._pending.pop(message[1], None)
        if waiter is None:
            return  # answered after its timeout: nobody waits for it any more
        self._deadlines.pop(message[1], None)
        if message[0] == RESPONSE:
            waiter.callback(message[2])
        else:
            waiter.errback(PeerError.from_wire(message[2]))

    def _answer(self, request_id: int, op: str, payload: Any) -> None:
        if self.identity_check is not None and self.caller is None:
            return  # not accepted (yet): nothing is answered before the identity is known
        if self.handler is None:
            self.sendString(encode_frame([ERROR, request_id, [str(Code.UNKNOWN_OPERATION),
                                                              "this side of the connection serves no requests"]]))
            return
        try:
            result = self.handler(op, payload, self.caller)
        except Exception:  # noqa: BLE001 - answered as an error
            self._reply_error(Failure(), request_id, op)
            return
        if isinstance(result, defer.Deferred):
            result.addCallbacks(self._reply, self._reply_error, callbackArgs=(request_id, op),
                                errbackArgs=(request_id, op))
        else:
            self._reply(result, request_id, op)

    def _reply(self, value: Any, request_id: int, op: str) -> None:
        if not self.connected:
            return
        try:
            frame = encode_frame([RESPONSE, request_id, value])
        except Exception:  # noqa: BLE001 - a handler answered something msgpack cannot carry: a bug
            self._reply_error(Failure(), request_id, op)
            return
        self.sendString(frame)

    def _reply_error(self, failure: Failure, request_id: int, op: str) -> None:
        """Answer a refusal with its code; anything else is a bug of the handler (the operations
        dispatcher has already typed and logged what it raises): logged here, answered ``internal``."""
        if not failure.check(PeerRefusal):
            self.log.failure("peer request {op} failed", failure, op=op[:64])
        if self.connected:
            self.sendString(encode_frame([ERROR, request_id, error_payload(failure.value)]))
