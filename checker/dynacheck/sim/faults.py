"""The nemeses of ``dynacheck sim``: each is the real fault's class (its plan, so a sim run's
``fault_schedule`` is planned exactly as a real run's) acting on the simulated cluster instead
of on hosts: a partition cuts links of the simulated network, a clock fault sets a node's wall
clock off, kill and power end processes (their unflushed writes die with them) and start new
ones, pause holds a process, netem slows and loses segments between nodes, disk gives a node an
empty disk while it is down."""

from __future__ import annotations

from typing import Any

from dynacheck.nemesis import Fault
from dynacheck.nemesis.clock import ClockFault
from dynacheck.nemesis.network import NetemFault, PartitionFault
from dynacheck.nemesis.process import KillFault, PauseFault
from dynacheck.nemesis.storage import DataLoss, DiskFault, PowerFault, Skipped
from dynacheck.sim.cluster import SimCluster
from dynactl.remote import HostResult

#: The faults the simulator can inject (``--nemesis``; a swarm picks among them).
SIM_FAULTS = ("partition", "clock", "kill", "pause", "netem", "disk", "power")


def done(nodes: list[str]) -> dict[str, HostResult]:
    return {node: HostResult(host=node, ok=True) for node in nodes}


class SimDb:
    """What the real faults' plans and the data-loss budget read of a cluster."""

    def __init__(self, sim: SimCluster):
        self.sim = sim
        self.ids = list(sim.ids)
        self.spare_ids: list[str] = []

    def statuses(self, timeout: float = 0.0, nodes: list[str] | None = None) -> dict[str, dict[str, Any] | str]:
        """Each running node's status document, read in-process (the nemesis's view)."""
        return {node: (process.status() if (process := self.sim.nodes[node]) is not None else "down")
                for node in (nodes or self.ids)}


class SimPartition(PartitionFault):
    def __init__(self, db: SimDb):
        Fault.__init__(self, db, observer=None)  # type: ignore[arg-type]
        self.sim = db.sim

    def setup(self) -> dict[str, HostResult]:
        return {}

    def start(self, value: dict[str, Any]) -> dict[str, HostResult]:
        hosts = self.sim.hosts
        self.sim.network.partition([(hosts[node], hosts[other]) for node, others in value["grudge"].items()
                                    for other in others if node in hosts and other in hosts])
        return done(sorted(value["grudge"]))

    def heal(self) -> dict[str, HostResult]:
        self.sim.network.heal()
        return done(self.sim.ids)

    def teardown(self) -> dict[str, HostResult]:
        return {}


class SimNetem(NetemFault):
    """Delay, jitter and loss on every link between two nodes (not the checker's)."""

    def __init__(self, db: SimDb):
        Fault.__init__(self, db, observer=None)  # type: ignore[arg-type]
        self.sim = db.sim

    def start(self, value: dict[str, Any]) -> dict[str, HostResult]:
        self.sim.network.netem = (value["delay_ms"] / 1000, value["jitter_ms"] / 1000, value["loss_percent"] / 100)
        return done(self.sim.ids)

    def heal(self) -> dict[str, HostResult]:
        self.sim.network.netem = None
        return done(self.sim.ids)


class SimClock(ClockFault):
    def __init__(self, db: SimDb):
        super().__init__(db, observer=None)  # type: ignore[arg-type]
        self.sim = db.sim
        self._strobes: list[Any] = []

    def setup(self) -> dict[str, HostResult]:
        return {}

    def start(self, value: dict[str, Any]) -> dict[str, HostResult]:
        if value["mode"] == "bump":
            self.sim.offsets.update({node: offset for node, offset in value["offsets"].items()
                                     if node in self.sim.offsets})
            return done(sorted(value["offsets"]))
        half_period = value["period_ms"] / 2000
        flips = int(value["duration"] / half_period)
        reactor = self.sim.client_reactor

        def flip(left: int) -> None:
            for node in value["nodes"]:
                self.sim.offsets[node] = value["delta"] if left % 2 == 0 else 0.0
            if left > 0:
                self._strobes.append(reactor.callLater(half_period, flip, left - 1))

        flip(flips - flips % 2)  # it ends skewed, as the real strobe does
        return done(value["nodes"])

    def heal(self) -> dict[str, HostResult]:
        for call in self._strobes:
            if call.active():
                call.cancel()
        self._strobes.clear()
        self.sim.offsets.update(dict.fromkeys(self.sim.offsets, 0.0))
        return done(self.sim.ids)


class _Restarts:
    """kill -9 on start; a new process on the same disk when the fault stops; heal starts every member."""

    sim: SimCluster

    def kill(self, nodes: list[str]) -> dict[str, HostResult]:
        for node in nodes:
            self.sim.kill(node)
        return done(nodes)

    def stop(self, value: dict[str, Any]) -> dict[str, HostResult]:
        for node in value["nodes"]:
            self.sim.start(node)
        return done(value["nodes"])

    def heal(self) -> dict[str, HostResult]:
        down = [node for node in self.sim.ids if self.sim.nodes[node] is None]
        for node in down:
            self.sim.start(node)
        return done(down)


class SimKill(_Restarts, KillFault):
    def __init__(self, db: SimDb):
        KillFault.__init__(self, db, observer=None)  # type: ignore[arg-type]
        self.sim = db.sim

    def start(self, value: dict[str, Any]) -> dict[str, HostResult]:
        return self.kill(value["nodes"])


class SimPower(_Restarts, PowerFault):
    def __init__(self, db: SimDb, losses: DataLoss):
        PowerFault.__init__(self, db, losses, observer=None)  # type: ignore[arg-type]
        self.sim = db.sim

    def prepare(self) -> dict[str, HostResult]:
        return {}

    def release(self) -> dict[str, HostResult]:
        return {}

    def start(self, value: dict[str, Any]) -> dict[str, HostResult]:
        return self.kill(value["nodes"])


class SimDisk(_Restarts, DiskFault):
    def __init__(self, db: SimDb, losses: DataLoss):
        DiskFault.__init__(self, db, losses, observer=None)  # type: ignore[arg-type]
        self.sim = db.sim

    def start(self, value: dict[str, Any]) -> dict[str, HostResult]:
        self.losses.check()  # raises Skipped while an earlier loss is not known repaired
        killed = self.kill(value["nodes"])
        for node in value["nodes"]:
            self.sim.lose_disk(node)
        self.losses.lost(value["nodes"])
        return killed


class SimPause(PauseFault):
    def __init__(self, db: SimDb):
        Fault.__init__(self, db, observer=None)  # type: ignore[arg-type]
        self.sim = db.sim

    def start(self, value: dict[str, Any]) -> dict[str, HostResult]:
        for node in value["nodes"]:
            self.sim.pause(node)
        return done(value["nodes"])

    def stop(self, value: dict[str, Any]) -> dict[str, HostResult]:
        for node in value["nodes"]:
            self.sim.resume(node)
        return done(value["nodes"])

    def heal(self) -> dict[str, HostResult]:
        for node in self.sim.ids:
            self.sim.resume(node)
        return done(self.sim.ids)


def sim_faults(names: tuple[str, ...], sim: SimCluster) -> dict[str, Fault]:
    """The simulated faults for ``names`` (ValueError for one the simulator cannot inject)."""
    unknown = [name for name in names if name not in SIM_FAULTS]
    if unknown:
        raise ValueError(f"the simulator cannot inject {', '.join(unknown)} (it can: {', '.join(SIM_FAULTS)})")
    db = SimDb(sim)
    losses = DataLoss(db, clock=sim.scheduler.seconds)  # type: ignore[arg-type]
    makers = {"partition": lambda: SimPartition(db), "clock": lambda: SimClock(db), "kill": lambda: SimKill(db),
              "pause": lambda: SimPause(db), "netem": lambda: SimNetem(db), "disk": lambda: SimDisk(db, losses),
              "power": lambda: SimPower(db, losses)}
    return {name: makers[name]() for name in names}


__all__ = ["SIM_FAULTS", "SimDb", "Skipped", "sim_faults"]
