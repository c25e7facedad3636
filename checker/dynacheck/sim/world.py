"""The simulated world of ``dynacheck sim``: one clock for everything, a reactor per host and a
network of TCP streams between them, all driven by one seeded random source.

* ``Scheduler``: the only clock. Every timer of every node and client is a ``DelayedCall`` on one
  heap; ``step`` runs the next one and moves time to it. Nothing waits for real time.
* ``HostReactor``: what one process sees as its Twisted reactor (``IReactorTime`` and the part of
  ``IReactorTCP`` the daemon uses). Killing the process drops every timer it set and every
  connection it held (its peers see a reset); pausing it (SIGSTOP) holds its timers and the bytes
  sent to it until it resumes, while its peers' kernels still accept connections and data.
* ``Network``: hosts by address; a stream per connection that keeps TCP's order in each direction
  while the delay of each segment is drawn from the seed, so messages on different connections
  reorder. A partition holds what crosses it (TCP retransmits until the link heals, or until one
  side gives up and resets the connection: its held segments are dropped, and its reset is
  lost); under netem a lost segment costs a retransmission timeout. A connection attempt
  across a partition sends its SYN again at 1, 3, 7... s (Linux's schedule) and times out
  unless the partition heals first; one to an address no process listens on is refused.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable
from typing import Any

from twisted.internet import error
from twisted.internet.address import IPv4Address
from twisted.internet.base import DelayedCall
from twisted.python.failure import Failure

#: A segment's one-way delay on a healthy link: a base and a tail (seconds).
BASE_DELAY = 0.0002
DELAY_TAIL = 0.0008
#: What a dropped segment costs: TCP's retransmission timeout (first try).
RETRANSMIT_DELAY = 0.2


class Scheduler:
    """Simulated time: a heap of ``DelayedCall``s (Twisted's own class, so ``reset``, ``delay`` and
    ``cancel`` behave as on a reactor). Ties run in the order they were scheduled."""

    def __init__(self, on_error: Callable[[BaseException], None]):
        self.now = 0.0
        self._heap: list[tuple[float, int, DelayedCall]] = []
        self._order = itertools.count()
        self.on_error = on_error
        self.events = 0

    def seconds(self) -> float:
        return self.now

    def call_for(self, owner: HostReactor, delay: float, fn: Callable[..., Any], args: tuple[Any, ...],
                 kwargs: dict[str, Any]) -> DelayedCall:
        """A call of ``owner``'s process (every call belongs to one: it dies and pauses with it)."""
        call = DelayedCall(self.now + max(0.0, delay), fn, args, kwargs, _ignore, self._push, seconds=self.seconds)
        call.owner = owner  # type: ignore[attr-defined]
        self._push(call)
        return call

    def release(self, calls: list[DelayedCall]) -> None:
        """Calls a paused process held: due now, in the order they came due."""
        for call in calls:
            if not (call.cancelled or call.called):
                call.time, call.delayed_time = self.now, 0
                self._push(call)

    def _push(self, call: DelayedCall) -> None:
        heapq.heappush(self._heap, (call.time, next(self._order), call))

    def next_time(self) -> float | None:
        """When the next live call is due (None: nothing is scheduled)."""
        while self._heap:
            when, _, call = self._heap[0]
            if call.cancelled or call.called or when != call.time:
                heapq.heappop(self._heap)
                continue
            return when + call.delayed_time
        return None

    def step(self) -> bool:
        """Run the next due call; False when nothing is scheduled."""
        while self._heap:
            when, _, call = heapq.heappop(self._heap)
            if call.cancelled or call.called or when != call.time:
                continue
            if call.delayed_time:
                call.activate_delay()
                self._push(call)
                continue
            owner = call.owner  # type: ignore[attr-defined]
            if owner.dead:  # a killed process's timer never fires
                continue
            if owner.paused:  # a stopped process's timer fires once it runs again
                owner.held.append(call)
                continue
            owner.network.current = owner.host
            self.now = max(self.now, when)
            call.called = 1
            self.events += 1
            try:
                call.func(*call.args, **call.kw)
            except Exception as exc:  # noqa: BLE001 - a reactor logs and goes on; the run reports it
                self.on_error(exc)
            return True
        return False

    def run_until(self, deadline: float, done: Callable[[], bool] = lambda: False) -> None:
        """Run calls until ``done()`` or the next one is after ``deadline`` (then time is ``deadline``)."""
        while not done():
            due = self.next_time()
            if due is None or due > deadline:
                self.now = max(self.now, deadline)
                return
            self.step()


def _ignore(call: DelayedCall) -> None:
    """Cancelling needs no work: the heap skips cancelled calls."""


class HostReactor:
    """One process's reactor. A timer of a killed process never fires; one of a paused process
    fires when it resumes."""

    def __init__(self, network: Network, host: str):
        self.network, self.host = network, host
        self.scheduler = network.scheduler
        self.dead = False
        self.paused = False
        self.held: list[DelayedCall] = []  # timers that came due while paused (not yet called)
        self.ends: dict[int, StreamEnd] = {}  # this process's connections, in the order they opened

    def seconds(self) -> float:
        return self.scheduler.now

    def callLater(self, delay: float, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> DelayedCall:  # noqa: N802
        return self.scheduler.call_for(self, delay, fn, args, kwargs)

    def callFromThread(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:  # noqa: N802
        self.callLater(0, fn, *args, **kwargs)

    def callWhenRunning(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:  # noqa: N802
        self.callLater(0, fn, *args, **kwargs)

    def getDelayedCalls(self) -> list[DelayedCall]:  # noqa: N802 - IReactorTime; nothing here needs them
        return []

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        """Run what came due while paused, in order, as soon as the process runs again."""
        self.paused = False
        held, self.held = self.held, []
        self.scheduler.release(held)

    def kill(self) -> None:
        """kill -9: nothing of this process runs again; its kernel resets every connection."""
        self.dead = True
        self.held.clear()
        self.network.unlisten(self)
        for end in list(self.ends.values()):
            end.reset_by_kernel()

    # -- IReactorTCP ------------------------------------------------------------------------------

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> Listening:  # noqa: N802
        return self.network.listen(self, interface or self.host, port, factory)

    def connectTCP(self, host: str, port: int, factory: Any, timeout: float = 30,  # noqa: N802
                   bindAddress: Any = None) -> Connector:  # noqa: N803
        connector = Connector(self, host, port, factory, timeout)
        connector.connect()
        return connector


class Listening:
    """``IListeningPort`` of a simulated listener."""

    def __init__(self, network: Network, reactor: HostReactor, address: tuple[str, int], factory: Any):
        self.network, self.reactor, self.address, self.factory = network, reactor, address, factory

    def getHost(self) -> IPv4Address:  # noqa: N802
        return IPv4Address("TCP", *self.address)

    def startListening(self) -> None:  # noqa: N802
        self.factory.doStart()

    def stopListening(self) -> None:  # noqa: N802
        if self.network.listeners.get(self.address) is self:
            del self.network.listeners[self.address]
            self.factory.doStop()


class Connector:
    """``IConnector`` of one connection attempt (``connectTCP``)."""

    def __init__(self, reactor: HostReactor, host: str, port: int, factory: Any, timeout: float):
        self.reactor, self.host, self.port, self.factory, self.timeout = reactor, host, port, factory, timeout
        self.state = "disconnected"
        self._attempt: Any = None
        self.end: StreamEnd | None = None

    def connect(self) -> None:
        self.state = "connecting"
        self.factory.doStart()
        self.factory.startedConnecting(self)
        self._attempt = self.reactor.network.attempt(self)

    def stopConnecting(self) -> None:  # noqa: N802
        if self.state == "connecting":
            self.failed(Failure(error.UserError(string="stopConnecting called")))

    def disconnect(self) -> None:
        if self.state == "connecting":
            self.stopConnecting()
        elif self.end is not None:
            self.end.loseConnection()

    def getDestination(self) -> IPv4Address:  # noqa: N802
        return IPv4Address("TCP", self.host, self.port)

    def cancel_attempt(self) -> None:
        if self._attempt is not None and self._attempt.active():
            self._attempt.cancel()
        self._attempt = None

    def failed(self, reason: Failure) -> None:
        self.cancel_attempt()
        self.state = "disconnected"
        self.factory.clientConnectionFailed(self, reason)
        self.factory.doStop()

    def connected(self, end: StreamEnd) -> None:
        self.cancel_attempt()
        self.state = "connected"
        self.end = end
        protocol = self.factory.buildProtocol(end.getPeer())
        if protocol is None:
            end.abortConnection()
            return
        end.attach(protocol)

    def lost(self, reason: Failure) -> None:
        self.state = "disconnected"
        self.factory.clientConnectionLost(self, reason)
        self.factory.doStop()


class StreamEnd:
    """One side of a TCP connection: the transport its protocol writes to (``ITCPTransport``, and
    the ``IPushProducer`` of its reads)."""

    def __init__(self, network: Network, reactor: HostReactor, local: tuple[str, int], remote: tuple[str, int]):
        self.network, self.reactor, self.local, self.remote = network, reactor, local, remote
        self.id = next(network.ids)
        self.peer: StreamEnd | None = None
        self.protocol: Any = None
        self.connector: Connector | None = None
        self.closed = False  # this side's process will see nothing more
        self.closing = False  # loseConnection called: close after what was written
        self.reading_paused = False
        self._inbox: list[Any] = []  # segments that arrived while reading was paused, or before a protocol
        self.arrival = 0.0  # when the last segment sent to this end arrives (TCP keeps order)
        self.held: list[Any] = []  # segments to this end a partition holds
        self.producer: Any = None
        reactor.ends[self.id] = self

    # -- ITransport -------------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if data and not self.closed and not self.closing and self.peer is not None:
            self.network.send(self, data)

    def writeSequence(self, data: list[bytes]) -> None:  # noqa: N802
        self.write(b"".join(data))

    def loseConnection(self) -> None:  # noqa: N802
        """Close after what was written (a FIN): the peer sees a clean close, then so does this side."""
        if self.closed or self.closing:
            return
        self.closing = True
        if self.peer is not None:
            self.network.send(self, _FIN)
        self.reactor.callLater(0, self._lost, Failure(error.ConnectionDone()))

    loseWriteConnection = loseConnection  # noqa: N815 - the daemon half-closes only to close

    def abortConnection(self) -> None:  # noqa: N802
        """Close now (a RST): the peer sees the connection lost."""
        if self.closed:
            return
        self._drop_unsent()
        if self.peer is not None:
            self.network.send(self, _RST)
        self._lost(Failure(error.ConnectionAborted()))

    def reset_by_kernel(self) -> None:
        """The process died: its kernel resets the connection; this side sees nothing."""
        if not self.closed:
            self.closed = True
            self.reactor.ends.pop(self.id, None)
            self._drop_unsent()
            if self.peer is not None:
                self.network.send(self, _RST)

    def _drop_unsent(self) -> None:
        """A reset discards this side's send queue: what a partition holds of its segments is what
        its kernel would retransmit, and now never will (``dynacheck sim`` seed 10271: a replica
        PUT held 18 s across a partition by a connection its sender had aborted after 1 s of
        silence arrived after the heal, and brought back a version reaped meanwhile)."""
        if self.peer is not None:
            self.peer.held.clear()

    def getPeer(self) -> IPv4Address:  # noqa: N802
        return IPv4Address("TCP", *self.remote)

    def getHost(self) -> IPv4Address:  # noqa: N802
        return IPv4Address("TCP", *self.local)

    def setTcpNoDelay(self, enabled: bool) -> None:  # noqa: N802
        pass

    def setTcpKeepAlive(self, enabled: bool) -> None:  # noqa: N802
        pass

    def registerProducer(self, producer: Any, streaming: bool) -> None:  # noqa: N802 - never backs up
        self.producer = producer

    def unregisterProducer(self) -> None:  # noqa: N802
        self.producer = None

    # -- IPushProducer (reading) ------------------------------------------------------------------

    def pauseProducing(self) -> None:  # noqa: N802
        self.reading_paused = True

    def resumeProducing(self) -> None:  # noqa: N802
        self.reading_paused = False
        inbox, self._inbox = self._inbox, []
        for segment in inbox:
            self.receive(segment)

    def stopProducing(self) -> None:  # noqa: N802
        self.loseConnection()

    # -- the network's side -----------------------------------------------------------------------

    def attach(self, protocol: Any) -> None:
        self.protocol = protocol
        protocol.makeConnection(self)
        inbox, self._inbox = self._inbox, []
        for segment in inbox:
            self.receive(segment)

    def receive(self, segment: Any) -> None:
        if self.closed:
            if isinstance(segment, bytes) and self.peer is not None and not self.peer.closed:
                self.network.send(self, _RST)  # data for a closed socket: its kernel answers a reset
            return
        if self.protocol is None or (self.reading_paused and segment is not _RST):
            self._inbox.append(segment)
            return
        if segment is _FIN:
            if not self.closing:
                self.closing = True
                self._lost(Failure(error.ConnectionDone()))
        elif segment is _RST:
            self._lost(Failure(error.ConnectionLost()))
        else:
            self.protocol.dataReceived(segment)

    def _lost(self, reason: Failure) -> None:
        if self.closed:
            return
        self.closed = True
        self.reactor.ends.pop(self.id, None)
        if self.protocol is not None:
            self.protocol.connectionLost(reason)
        if self.connector is not None:
            self.connector.lost(reason)


_FIN = "FIN"
_RST = "RST"


class Network:
    """Every host's listeners and the streams between them, with the faults of the links.

    ``delay`` draws a segment's one-way delay; ``netem`` (the netem fault: delay, jitter and loss
    between ``nodes``) adds to it, a lost segment costing a retransmission timeout; ``cut`` holds
    the pairs of hosts that cannot reach each other (a partition)."""

    def __init__(self, scheduler: Scheduler, rng: random.Random):
        self.scheduler, self.rng = scheduler, rng
        self.listeners: dict[tuple[str, int], Listening] = {}
        self.cut: set[frozenset[str]] = set()
        self.ids = itertools.count()
        self.netem: tuple[float, float, float] | None = None  # (delay s, jitter s, loss fraction)
        self.nodes: set[str] = set()  # the hosts netem applies between (the nodes', not the checker's)
        self._held: dict[int, StreamEnd] = {}  # ends with segments a partition holds
        self.current = ""  # the host whose code runs now (what its log lines are tagged with)

    # -- links ------------------------------------------------------------------------------------

    def blocked(self, a: str, b: str) -> bool:
        return a != b and frozenset((a, b)) in self.cut

    def partition(self, pairs: list[tuple[str, str]]) -> None:
        self.cut |= {frozenset(pair) for pair in pairs if pair[0] != pair[1]}

    def heal(self) -> None:
        """Every link works again: what a partition held arrives (TCP's retransmissions)."""
        self.cut.clear()
        held, self._held = self._held, {}
        for end in held.values():
            segments, end.held = end.held, []
            for segment in segments:
                self._schedule(end, segment)

    def delay(self, source: str, target: str) -> float:
        rng = self.rng
        seconds = BASE_DELAY + rng.expovariate(1 / DELAY_TAIL)
        if self.netem is not None and source in self.nodes and target in self.nodes:
            delay, jitter, loss = self.netem
            seconds += max(0.0, delay + rng.uniform(-jitter, jitter))
            if loss and rng.random() < loss:
                seconds += RETRANSMIT_DELAY * rng.choice((1, 1, 2, 4))
        return seconds

    # -- listening and connecting -----------------------------------------------------------------

    def listen(self, reactor: HostReactor, host: str, port: int, factory: Any) -> Listening:
        address = (reactor.host if host in ("", "0.0.0.0") else host, port)
        if address in self.listeners:
            raise error.CannotListenError(address[0], port, OSError(98, "Address already in use"))
        listening = self.listeners[address] = Listening(self, reactor, address, factory)
        listening.startListening()
        return listening

    def unlisten(self, reactor: HostReactor) -> None:
        for address, listening in list(self.listeners.items()):
            if listening.reactor is reactor:
                del self.listeners[address]

    def attempt(self, connector: Connector, sent: float = 0.0) -> Any:
        """A SYN ``sent`` seconds into the attempt: answered after a round trip (accepted, or
        refused); lost to a partition, it is sent again as Linux does (1 s, then 2, 4... later)
        until the attempt's timeout, when the connection fails."""
        source, target = connector.reactor.host, connector.host
        if self.blocked(source, target):
            retransmit = 2 * sent + 1.0  # 0 -> 1 -> 3 -> 7 ...
            if retransmit >= connector.timeout:
                return connector.reactor.callLater(connector.timeout - sent, connector.failed,
                                                   Failure(error.TimeoutError(string="connection attempt timed out")))
            return connector.reactor.callLater(retransmit - sent, self._retransmit, connector, retransmit)
        return connector.reactor.callLater(self.delay(source, target) * 2, self._answer, connector, sent)

    def _retransmit(self, connector: Connector, sent: float) -> None:
        connector._attempt = self.attempt(connector, sent)  # noqa: SLF001 - its own attempt

    def _answer(self, connector: Connector, sent: float) -> None:
        address = (connector.host, connector.port)
        listening = self.listeners.get(address)
        if self.blocked(connector.reactor.host, connector.host):  # cut while the SYN was on its way
            self._retransmit(connector, sent)
            return
        if listening is None:
            connector.failed(Failure(error.ConnectionRefusedError(string="connection refused")))
            return
        port = 40000 + next(self.ids) % 20000
        client = StreamEnd(self, connector.reactor, (connector.reactor.host, port), address)
        server = StreamEnd(self, listening.reactor, address, (connector.reactor.host, port))
        client.peer, server.peer = server, client
        client.connector = connector
        # The server's kernel accepted: its process builds the protocol when it next runs.
        listening.reactor.callLater(0, self._accept, listening, server)
        connector.connected(client)

    def _accept(self, listening: Listening, end: StreamEnd) -> None:
        if end.closed:
            return
        protocol = listening.factory.buildProtocol(end.getPeer())
        if protocol is None:
            end.abortConnection()
            return
        end.attach(protocol)

    # -- segments ---------------------------------------------------------------------------------

    def send(self, source: StreamEnd, segment: Any) -> None:
        if source.peer is not None:
            self._schedule(source.peer, segment)

    def _schedule(self, target: StreamEnd, segment: Any) -> None:
        source_host, target_host = target.remote[0], target.local[0]
        arrival = max(self.scheduler.now + self.delay(source_host, target_host), target.arrival)
        target.arrival = arrival
        target.reactor.callLater(arrival - self.scheduler.now, self._arrive, target, segment)

    def _arrive(self, target: StreamEnd, segment: Any) -> None:
        if segment is _RST and self.blocked(target.remote[0], target.local[0]):
            return  # a reset is sent once, never retransmitted: a partition loses it
        if target.held or self.blocked(target.remote[0], target.local[0]):
            target.held.append(segment)
            self._held[target.id] = target
            return
        target.receive(segment)
