"""Local failure detection (Dynamo §4.8.3): each node decides on its own whether a peer is up.

Two kinds of evidence, both fed in with the time they happened (no clock reads here):

* **Arrivals** (gossip received, any request answered): a phi-accrual detector (Hayashibara et al.,
  as in Cassandra and Akka) turns the time since the last arrival into a suspicion level ``phi``,
  scaled by the usual spacing of arrivals, so a peer that always gossips every second is suspected
  sooner than one that is naturally irregular.
* **Failures** (a timed-out or refused request): ``failures_to_suspect`` in a row mark the peer
  down at once, without waiting for phi to climb (the coordinator's own evidence, §4.6).
* **Lost connections**: a peer connection that closed, or an attempt the peer refused, marks the
  peer down at once: a process that exited (killed or stopped) is noticed by its peers' kernels
  within a round trip, long before either of the above.
* **Goodbyes**: a node that stops cleanly says so first; it is down from then on, and an answer
  brings it back only over a connection opened after the goodbye (answers still under way on the
  old connection are from the process that is stopping).

Any arrival clears the failure count and a lost connection, so a peer is up again as soon as it
answers; a peer never heard from is not up yet.
"""

from __future__ import annotations

import collections
import math

import attrs

#: Default suspicion threshold: phi 8 means a false positive about once in 10^8 heartbeats.
DEFAULT_PHI_THRESHOLD = 8.0


@attrs.define
class PhiAccrual:
    """Arrival history of one peer and the phi it implies."""

    window: int = 100
    min_std: float = 0.1
    first_interval: float = 1.0
    acceptable_pause: float = 0.0
    intervals: collections.deque = attrs.field(factory=collections.deque)
    last_arrival: float | None = None
    # Running sums keep phi O(1): it is asked on every request for every owner of the key.
    _sum: float = 0.0
    _sum_of_squares: float = 0.0

    def arrival(self, now: float) -> None:
        """Something arrived from the peer at ``now``. An arrival less than half the heartbeat
        spacing after the last one (an extra ping, answered when a connection opened) moves the
        last arrival but is not a sample of the spacing: one such millisecond sample made phi
        climb past any threshold at the next beat, and every peer was down until its ping came
        back (a start-up PUT at W=3 was refused that way)."""
        if self.last_arrival is not None and now - self.last_arrival >= self.first_interval / 2:
            interval = now - self.last_arrival
            self.intervals.append(interval)
            self._sum += interval
            self._sum_of_squares += interval * interval
            while len(self.intervals) > self.window:
                dropped = self.intervals.popleft()
                self._sum -= dropped
                self._sum_of_squares -= dropped * dropped
        if self.last_arrival is None or now > self.last_arrival:
            self.last_arrival = now

    def _mean_and_std(self) -> tuple[float, float]:
        if not self.intervals:
            # Before any history: assume the configured spacing, with a generous spread.
            return self.first_interval, self.first_interval / 4
        count = len(self.intervals)
        mean = self._sum / count
        variance = max(0.0, self._sum_of_squares / count - mean * mean)
        return mean, max(math.sqrt(variance), self.min_std)

    def phi(self, now: float) -> float:
        """Suspicion that the peer is gone: -log10 of the chance that the next arrival is still
        coming, under a normal model of past intervals (Akka's logistic approximation)."""
        if self.last_arrival is None:
            return 0.0
        elapsed = max(0.0, now - self.last_arrival - self.acceptable_pause)
        mean, std = self._mean_and_std()
        y = (elapsed - mean) / std
        # phi = -log10(e / (1 + e)) with e = exp(-z), computed without under- or overflow
        z = y * (1.5976 + 0.070566 * y * y)
        if z > 0:
            return (z + math.log1p(math.exp(-z))) / math.log(10)
        return math.log1p(math.exp(z)) / math.log(10)


@attrs.define
class PeerHealth:
    """One peer's evidence: arrivals (phi), consecutive failures, a lost connection, a goodbye."""

    accrual: PhiAccrual = attrs.field(factory=PhiAccrual)
    consecutive_failures: int = 0
    last_failure: float | None = None
    #: The connection was lost or refused since the last arrival.
    disconnected: bool = False
    #: The peer said it is stopping; ``reconnected`` once a connection was opened after that.
    departed: bool = False
    reconnected: bool = False

    def arrival(self, now: float) -> None:
        """The peer answered or gossiped: evidence it is up (after a goodbye, only over a new
        connection)."""
        self.accrual.arrival(now)
        self.consecutive_failures = 0
        self.disconnected = False
        if self.reconnected:
            self.departed = self.reconnected = False

    def failure(self, now: float) -> None:
        """A request to the peer failed or timed out."""
        self.consecutive_failures += 1
        self.last_failure = now

    def connection_lost(self, now: float) -> None:
        """The peer's connection closed or was refused."""
        self.disconnected = True
        self.last_failure = now

    def goodbye(self, now: float) -> None:
        """The peer announced that it is stopping."""
        self.departed, self.reconnected = True, False
        self.last_failure = now

    def connected(self) -> None:
        """A new connection to the peer was opened."""
        if self.departed:
            self.reconnected = True

    def suspected(self) -> bool:
        """Down on direct evidence, whatever phi says."""
        return self.departed or self.disconnected


@attrs.define
class FailureDetector:
    """Decides, for every peer this node knows, whether it is up."""

    phi_threshold: float = DEFAULT_PHI_THRESHOLD
    failures_to_suspect: int = 1
    first_interval: float = 1.0
    peers: dict[str, PeerHealth] = attrs.field(factory=dict)

    def _health(self, peer: str) -> PeerHealth:
        health = self.peers.get(peer)
        if health is None:
            health = self.peers[peer] = PeerHealth(PhiAccrual(first_interval=self.first_interval))
        return health

    def arrival(self, peer: str, now: float) -> None:
        """Record that ``peer`` answered or gossiped at ``now``."""
        self._health(peer).arrival(now)

    def failure(self, peer: str, now: float) -> None:
        """Record that a request to ``peer`` failed at ``now``."""
        self._health(peer).failure(now)

    def connection_lost(self, peer: str, now: float) -> None:
        """Record that the connection to ``peer`` closed, or that it refused one, at ``now``."""
        self._health(peer).connection_lost(now)

    def goodbye(self, peer: str, now: float) -> None:
        """Record that ``peer`` said at ``now`` that it is stopping."""
        self._health(peer).goodbye(now)

    def connected(self, peer: str) -> None:
        """Record that a new connection to ``peer`` was opened."""
        self._health(peer).connected()

    def phi(self, peer: str, now: float) -> float:
        """The peer's current suspicion level."""
        return self._health(peer).accrual.phi(now)

    def is_up(self, peer: str, now: float) -> bool:
        """Up once heard from, until requests keep failing, its connection is lost, it said
        goodbye, or it has been silent for too long. A peer never heard from is not known to be up."""
        health = self._health(peer)
        if (health.accrual.last_arrival is None or health.consecutive_failures >= self.failures_to_suspect
                or health.suspected()):
            return False
        return health.accrual.phi(now) < self.phi_threshold
