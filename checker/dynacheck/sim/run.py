"""One ``dynacheck sim`` run: the runner's test (``dynacheck.runner.Test``: the same generators,
fault schedule, history, phases, checkers and store layout) on a ``SimCluster`` in simulated
time. The checker's clients run the same op steps (``dynacheck.client.Client.steps``) over the
simulated network; the replica monitor and the convergence polls are the runner's, on the
simulated clock.

Deterministic: every random choice comes from the seed (the world's, each node's, the swarm's),
time is the scheduler's, and hash-ordered sets are kept out of what decides an order; the same
seed and code give the same history byte for byte (``PYTHONHASHSEED`` is fixed by the CLI).
"""

from __future__ import annotations

import io
import random
import traceback
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import attrs
from twisted.internet import defer
from twisted.logger import ILogObserver, LogLevel, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from zope.interface import provider

from dynacheck import store
from dynacheck.checkers import check_all
from dynacheck.client import Ask, Client, Steps
from dynacheck.db import TEST_NODE_CONFIG
from dynacheck.history import INFO, INVOKE, MONITOR, NEMESIS, Op
from dynacheck.interpreter import Runtime, complete, invocation, run
from dynacheck.progress import Progress
from dynacheck.runner import MONITOR_INTERVAL, Options, Test, _replica_poll, node_config
from dynacheck.sim.cluster import SimCluster
from dynacheck.sim.db import ASK_LIMIT, SimDb
from dynacheck.sim.faults import SIM_FAULTS, sim_faults
from dynacheck.verdict import exit_code, judge

SECOND = 1_000_000_000
#: The node settings of a sim run: a real run's (16 partitions, the test settings: fast repair,
#: short timeouts).
SIM_NODE_CONFIG = {"partitions": 16, **TEST_NODE_CONFIG}


@attrs.frozen
class Swarm:
    """What one seed chose beyond the workload (FoundationDB's buggify): which faults, how often
    and for how long each lasts."""

    nemesis: tuple[str, ...]
    nemesis_interval: float
    nemesis_duration: float

    @classmethod
    def choose(cls, seed: int, faults: tuple[str, ...]) -> Swarm:
        rng = random.Random(f"{seed}-swarm")
        chosen = tuple(fault for fault in faults if rng.random() < 0.5) or (rng.choice(faults),)
        return cls(nemesis=chosen, nemesis_interval=rng.choice((1.0, 2.0, 5.0, 10.0)),
                   nemesis_duration=rng.choice((1.0, 3.0, 5.0, 10.0)))


def _drive(steps: Steps, answer: Callable[[Ask], defer.Deferred]) -> defer.Deferred:
    """``dynacheck.client.drive`` on Deferreds: each Ask's answer is awaited on the simulated clock."""
    finished: defer.Deferred = defer.Deferred()

    def advance(reply: Any, failure: BaseException | None) -> None:
        try:
            ask = steps.throw(failure) if failure is not None else steps.send(reply)
        except StopIteration as stop:
            finished.callback(stop.value)
            return
        except Exception as exc:  # noqa: BLE001 - the op's completion says so
            finished.errback(exc)
            return
        answer(ask).addCallbacks(lambda value: advance(value, None), lambda f: advance(None, f.value))

    advance(None, None)
    return finished


class SimRuntime(Runtime):
    """Client threads as Deferred chains on the checker's simulated host; the nemesis runs at once."""

    def __init__(self, sim: SimCluster, execute: Callable[[Any, Op], Any], record: Callable[[Op], Op]):
        self.sim, self.execute, self.record = sim, execute, record
        self.done: list[tuple[Any, Op]] = []

    def now(self) -> int:
        return round(self.sim.scheduler.now * SECOND)  # exact for a time a wait was given

    def dispatch(self, op: Op) -> None:
        delay = max(0, op["time"] - self.now()) / SECOND
        self.sim.client_reactor.callLater(delay, self._invoke, op)

    def _invoke(self, op: Op) -> None:
        invoke = self.record(invocation(op))
        thread = op["thread"]

        def finish(fields: Any) -> None:
            if not isinstance(fields, dict):  # a Failure: the executor broke
                fields = {"type": INFO, "error": f"{fields.type.__name__}: {fields.getErrorMessage()}"}
            self.done.append((thread, self.record(complete(invoke, fields))))

        defer.maybeDeferred(self.execute, thread, invoke).addBoth(finish)

    def wait(self, until: int | None) -> list[tuple[Any, Op]]:
        scheduler = self.sim.scheduler
        deadline = scheduler.now + ASK_LIMIT * 100 if until is None else until / SECOND
        scheduler.run_until(deadline, lambda: bool(self.done))
        done, self.done = self.done, []
        return done


class SimTest(Test):
    """The runner's test on a simulated cluster."""

    def __init__(self, options: Options, run_dir: Path, progress: Progress, swarm: Swarm | None):
        super().__init__(options, run_dir, progress)
        self.swarm = swarm
        self.errors: list[str] = []
        self.sim = SimCluster(options.local or 3, {"mode": options.mode, "n": options.n, "r": options.r,
                                                   "w": options.w, **SIM_NODE_CONFIG, **node_config(options)},
                              options.seed, self._daemon_error, spares=options.spares)
        self.cluster = SimDb(self.sim, options.client_timeout)  # type: ignore[assignment]
        if swarm is not None:
            self.test["swarm"] = attrs.asdict(swarm)
        self.test.update(simulated=True, nodes=self.cluster.ids, spare_nodes=self.cluster.spare_ids,
                         node_addresses={node: self.cluster.host(node).http for node in self.sim.ids})

    def _daemon_error(self, host: str, exc: BaseException) -> None:
        self.errors.append(f"{host}: {type(exc).__name__}: {exc}")

    def now(self) -> int:
        return round(self.sim.scheduler.now * SECOND) - getattr(self, "start_ns", 0)

    def seconds(self) -> float:
        return self.sim.scheduler.now

    def sleep(self, seconds: float) -> None:
        self.sim.scheduler.run_until(self.sim.scheduler.now + seconds)

    def start(self) -> None:
        for node in self.cluster.ids:
            self.sim.start(node)
        self.sleep(2.0)  # connections made, first heartbeats heard
        self.faults = sim_faults(self.options.nemesis, self.cluster, self.options.w)
        self.schedule = self.plan_faults()
        self.start_ns = round(self.sim.scheduler.now * SECOND)  # history times count from the workload

    def main_phase(self) -> None:
        stop = [False]
        self._monitor(stop)
        try:
            self._interpret(self.main_generator(), nemesis=bool(self.faults))
        finally:
            stop[0] = True

    def _monitor(self, stop: list[bool]) -> None:
        """The runner's replica monitor: every hot key on every node, one poll after another,
        a round every ``MONITOR_INTERVAL``."""
        clients = {node: self.cluster.http(node, min(1.0, self.options.client_timeout)) for node in self.sim.ids}
        polls: list[tuple[str, str]] = []
        reactor = self.sim.client_reactor

        def poll(index: int) -> None:
            if stop[0]:
                return
            if index == 0:  # each round polls the members of the moment
                polls[:] = [(key, node) for key in self.workload.keys for node in self.cluster.ids]
            if index == len(polls):
                reactor.callLater(MONITOR_INTERVAL, poll, 0)
                return
            key, node = polls[index]
            base = {"process": MONITOR, "f": "replica", "key": key, "node": node}
            self.record({**base, "type": INVOKE, "value": None})

            def answered(result: Any) -> None:
                if not stop[0]:
                    self.record({**base, **_replica_poll(_Answered(result), key)})
                poll(index + 1)

            clients[node].replica(key).addBoth(answered)

        reactor.callLater(MONITOR_INTERVAL, poll, 0)

    def _interpret(self, generator: Any, nemesis: bool) -> None:
        concurrency = self.options.concurrency
        # One kept-alive connection per thread and node, as each thread's DynamoClients keep them.
        http = {(thread, node): self.cluster.http(node) for thread in range(concurrency) for node in self.sim.ids}
        clients: dict[int, Client] = {}
        versions: dict[int, int] = {}  # the membership each thread's client was built for

        def execute(thread: Any, op: Op) -> Any:
            if thread == NEMESIS:
                return self._nemesis_op(op)
            return _drive(clients[thread].steps(op), lambda ask: getattr(http[thread, ask[0]], ask[1])(*ask[2]))

        def follow_members(thread: int) -> None:
            """Between two ops of ``thread``: after a membership change its client talks to the
            members of now, starting where it was if that node is still one (the runner's rule)."""
            if versions.get(thread) == self.cluster.membership_version:
                return
            members = self.cluster.addresses()
            ids = list(members)
            old = clients.get(thread)
            start = old.current_node if old is not None and old.current_node in members else ids[thread % len(ids)]
            clients[thread] = Client(members, start, timeout=self.options.client_timeout)
            versions[thread] = self.cluster.membership_version

        for thread in range(concurrency):
            follow_members(thread)

        def record(op: Op) -> Op:
            if op["type"] == INVOKE and isinstance(op.get("process"), int) and not op.get("node"):
                follow_members(op["process"] % concurrency)
                op = {**op, "node": clients[op["process"] % concurrency].current_node}
            return self.history.append(op)

        self.next_process = run(generator, SimRuntime(self.sim, execute, record), self.options.concurrency,
                                nemesis=nemesis, on_completion=self.progress.completed, first_process=self.next_process)

    def quiesce(self) -> None:
        self.sleep(max(self.options.quiesce, 2.0))  # restarted nodes reconnect, hints start to move


class _Answered:
    """An answer that already arrived, as the runner's ``_replica_poll`` asks a client for it."""

    def __init__(self, result: Any):
        self.result = result

    def replica(self, key: str) -> Any:
        if isinstance(self.result, Failure):  # (a BaseException too, in this Twisted: test it first)
            self.result.raiseException()
        return self.result


def run_sim(options: Options, swarm: Swarm | None, stream: Any = None,
            checkers: tuple[str, ...] | None = None) -> tuple[Path, dict[str, Any], int]:
    """Run one simulated test and check it (with ``checkers`` only, when given); returns (run
    directory, results, exit code)."""
    random.seed(options.seed)  # anything left on the global source (Twisted's retry jitter) is seeded too
    store_dir = Path(options.store)
    run_dir = store.new_run_dir(store_dir, options.test_name(), datetime.now())
    progress = Progress(options.time_limit, stream if stream is not None else io.StringIO())
    test = SimTest(options, run_dir, progress, swarm)
    errors: list[str] = []

    @provider(ILogObserver)
    def failures(event: dict[str, Any]) -> None:
        failure = event.get("log_failure")
        if failure is not None or event.get("log_level") in (LogLevel.error, LogLevel.critical):
            cause = f" ({failure.type.__name__}: {failure.getErrorMessage()})" if failure is not None else ""
            errors.append(f"{test.sim.network.current}: {formatEvent(event).strip()}{cause}"[:500])

    globalLogPublisher.addObserver(failures)
    crashed = None
    try:
        test.start()
        test.save_test()
        test.main_phase()
        test.heal()
        with test.cluster.clients(options.client_timeout) as clients:
            test.snapshot_status("before", clients)
        test.quiesce()
        test.test["converged"] = test.poll_convergence()
        test.final_reads()
    except Exception as exc:  # noqa: BLE001 - the run is stored and checked all the same
        crashed = f"{type(exc).__name__}: {exc}"
        (run_dir / "crash.txt").write_text(traceback.format_exc())
    finally:
        globalLogPublisher.removeObserver(failures)
        test.sim.stop_all()
        test.history.close()
    # An exception that escaped a timer or a delivery (what a reactor logs as unhandled), a failure
    # a node logged and an error no Deferred handled make the run invalid: a correct node has none.
    daemon_errors = test.errors + errors
    test.test.update(crashed=crashed, problems=test.problems, daemon_errors=daemon_errors[:50],
                     simulated_seconds=round(test.sim.scheduler.now, 3), events=test.sim.scheduler.events)
    test.save_test()
    checked = check_all(test.test, test.history.ops, run_dir, **({"names": checkers} if checkers else {}))
    results = judge(test.test, test.history.ops, checked)
    if daemon_errors:
        results["daemon_errors"] = {"valid": False, "count": len(daemon_errors), "first": daemon_errors[:5]}
        results["valid"] = False
    store.save_json(run_dir / "results.json", results)
    store.update_latest(store_dir, run_dir)
    return run_dir, results, exit_code(results, crashed is not None)


__all__ = ["SIM_FAULTS", "Swarm", "run_sim"]
