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
from dynacheck.nemesis.membership import MembershipFault
from dynacheck.nemesis.network import NetemFault, PartitionFault
from dynacheck.nemesis.process import KillFault, PauseFault
from dynacheck.nemesis.storage import DataLoss, DiskFault, PowerFault, Skipped
from dynacheck.sim.cluster import SimCluster
from dynacheck.sim.db import SimDb
from dynactl.remote import HostResult

#: The faults the simulator can inject (``--nemesis``; a swarm picks among them).
SIM_FAULTS = ("partition", "clock", "kill", "pause", "netem", "disk", "power", "membership")


def done(nodes: list[str]) -> dict[str, HostResult]:
    return {node: HostResult(host=node, ok=True) for node in nodes}


class SimPartition(PartitionFault):
    def __init__(self, db: SimDb):
        Fault.__init__(self, db, observer=None)  # type: ignore[arg-type]
        self.sim, self.db = db.sim, db

    def setup(self) -> dict[str, HostResult]:
        return {}

    def start(self, value: dict[str, Any]) -> dict[str, HostResult]:
        hosts = self.sim.hosts
        self.sim.network.partition([(hosts[node], hosts[other]) for node, others in value["grudge"].items()
                                    for other in others if node in hosts and other in hosts])
        return done(sorted(value["grudge"]))

    def heal(self) -> dict[str, HostResult]:
        self.sim.network.heal()
        return done(self.db.ids)

    def teardown(self) -> dict[str, HostResult]:
        return {}


class SimNetem(NetemFault):
    """Delay, jitter and loss on every link between two nodes (not the checker's)."""

    def __init__(self, db: SimDb):
        Fault.__init__(self, db, observer=None)  # type: ignore[arg-type]
        self.sim, self.db = db.sim, db

    def start(self, value: dict[str, Any]) -> dict[str, HostResult]:
        self.sim.network.netem = (value["delay_ms"] / 1000, value["jitter_ms"] / 1000, value["loss_percent"] / 100)
        return done(self.db.ids)

    def heal(self) -> dict[str, HostResult]:
        self.sim.network.netem = None
        return done(self.db.ids)


class SimClock(ClockFault):
    def __init__(self, db: SimDb):
        super().__init__(db, observer=None)  # type: ignore[arg-type]
        self.sim, self.db = db.sim, db
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
        return done(self.db.ids)


class _Restarts:
    """kill -9 on start; a new process on the same disk when the fault stops; heal starts every member."""

    sim: SimCluster
    db: SimDb

    def kill(self, nodes: list[str]) -> dict[str, HostResult]:
        for node in nodes:
            self.sim.kill(node)
        return done(nodes)

    def stop(self, value: dict[str, Any]) -> dict[str, HostResult]:
        for node in value["nodes"]:
            self.sim.start(node)
        return done(value["nodes"])

    def heal(self) -> dict[str, HostResult]:
        down = [node for node in self.db.ids if self.sim.nodes[node] is None]
        for node in down:
            self.sim.start(node)
        return done(down)


class SimKill(_Restarts, KillFault):
    def __init__(self, db: SimDb):
        KillFault.__init__(self, db, observer=None)  # type: ignore[arg-type]
        self.sim, self.db = db.sim, db

    def start(self, value: dict[str, Any]) -> dict[str, HostResult]:
        return self.kill(value["nodes"])


class SimPower(_Restarts, PowerFault):
    def __init__(self, db: SimDb, losses: DataLoss):
        PowerFault.__init__(self, db, losses, observer=None)  # type: ignore[arg-type]
        self.sim, self.db = db.sim, db

    def prepare(self) -> dict[str, HostResult]:
        return {}

    def release(self) -> dict[str, HostResult]:
        return {}

    def start(self, value: dict[str, Any]) -> dict[str, HostResult]:
        return self.kill(value["nodes"])


class SimDisk(_Restarts, DiskFault):
    def __init__(self, db: SimDb, losses: DataLoss):
        DiskFault.__init__(self, db, losses, observer=None)  # type: ignore[arg-type]
        self.sim, self.db = db.sim, db

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
        self.sim, self.db = db.sim, db

    def start(self, value: dict[str, Any]) -> dict[str, HostResult]:
        for node in value["nodes"]:
            self.sim.pause(node)
        return done(value["nodes"])

    def stop(self, value: dict[str, Any]) -> dict[str, HostResult]:
        for node in value["nodes"]:
            self.sim.resume(node)
        return done(value["nodes"])

    def heal(self) -> dict[str, HostResult]:
        for node in self.sim.ids:  # spares too: a node paused as a member may have left since
            self.sim.resume(node)
        return done(self.db.ids)


def membership_fault(db: SimDb, losses: DataLoss) -> MembershipFault:
    """The real membership nemesis (joins, leaves, replacements, removals, each waited on until it
    settles) on the simulated cluster: its waits run the world forward. While it waits, no new
    client op starts (ops in flight go on): the interpreter waits for the nemesis op, as no thread
    can run beside it."""
    sim = db.sim
    fault = MembershipFault(db, losses, clock=sim.scheduler.seconds,  # type: ignore[arg-type]
                            sleep=lambda seconds: sim.scheduler.run_until(sim.scheduler.now + seconds))
    fault.health = db.health  # type: ignore[assignment]
    fault._client = lambda node: db.client(node, fault.timeout)  # type: ignore[method-assign]  # noqa: SLF001
    return fault


def sim_faults(names: tuple[str, ...], db: SimDb, w: int) -> dict[str, Fault]:
    """The simulated faults for ``names`` (``membership`` last, as ``make_faults`` orders them;
    ValueError for one the simulator cannot inject); ``w`` bounds the copies they may lose."""
    unknown = [name for name in names if name not in SIM_FAULTS]
    if unknown:
        raise ValueError(f"the simulator cannot inject {', '.join(unknown)} (it can: {', '.join(SIM_FAULTS)})")
    losses = DataLoss(db, w, clock=db.sim.scheduler.seconds)  # type: ignore[arg-type]
    makers = {"partition": lambda: SimPartition(db), "clock": lambda: SimClock(db), "kill": lambda: SimKill(db),
              "pause": lambda: SimPause(db), "netem": lambda: SimNetem(db), "disk": lambda: SimDisk(db, losses),
              "power": lambda: SimPower(db, losses), "membership": lambda: membership_fault(db, losses)}
    return {name: makers[name]() for name in sorted(names, key=lambda name: name == "membership")}


__all__ = ["SIM_FAULTS", "SimDb", "Skipped", "sim_faults"]
