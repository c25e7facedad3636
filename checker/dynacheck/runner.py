"""One test from start to verdict (Jepsen's ``core/run!``).

set up the nodes -> workload + nemesis for ``time_limit`` -> heal every fault -> quiesce -> poll
every replica until they converge -> final reads -> collect logs -> tear down -> check -> store.
Whatever happens (a crash, Ctrl-C), faults are healed, nodes torn down and what exists is stored
and checked; the run then counts as crashed (exit 3).
"""

from __future__ import annotations

import base64
import contextlib
import random
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import attrs

from dynacheck import store
from dynacheck.checkers import check_all
from dynacheck.checkers.convergence import ring_owners, round_verdict
from dynacheck.client import Client, version_entry
from dynacheck.db import TEST_NODE_CONFIG, Cluster, local_cluster, secure_hosts, with_test_settings
from dynacheck.generator import (
    SECOND,
    ClientOps,
    Concurrently,
    FaultSchedule,
    Once,
    Phases,
    PlannedFault,
    Stagger,
    TimeLimit,
    plan_schedule,
)
from dynacheck.history import CONVERGENCE, FAIL, INFO, INVOKE, MONITOR, NEMESIS, OK, HistoryWriter, Op, is_client
from dynacheck.interpreter import ThreadRuntime, run
from dynacheck.nemesis import Fault, completion, make_faults, not_undone
from dynacheck.nemesis.storage import Skipped, release_command
from dynacheck.progress import Progress
from dynacheck.verdict import (  # noqa: F401 - the runner's verdict, exit codes and analyze live there
    EXIT_CRASHED,
    EXIT_INVALID,
    EXIT_UNKNOWN,
    EXIT_VALID,
    analyze,
    exit_code,
    judge,
)
from dynacheck.workloads import workload
from dynactl.credentials import host_credentials, nodes_file_credentials, with_credentials
from dynactl.inventory import Host, load_hosts
from dynactl.remote import SshHosts
from dynamod.client import ClientError, DynamoClient, NodeUnavailable
from dynamod.config import SETTINGS_BY_NAME

#: Seconds between rounds of the replica monitor (each round polls every hot key on every node).
MONITOR_INTERVAL = 0.5


@attrs.frozen
class Options:
    """Everything that defines a test (saved as ``test.json``; the seed replays its schedule)."""

    workload: str = "cart"
    nemesis: tuple[str, ...] = ()
    time_limit: float = 60.0
    concurrency: int = 10
    rate: float = 50.0
    keys: int = 5
    mode: str = "vclock"
    n: int = 3
    r: int = 2
    w: int = 2
    seed: int = 0
    nemesis_interval: float = 5.0
    nemesis_duration: float = 5.0
    quiesce: float = 0.5
    quiet_margin: float = 3.0
    convergence_timeout: float = 60.0
    client_timeout: float = 5.0
    local: int | None = None
    testbed: int | None = None
    spares: int = 0  # hosts beyond the initial members, installed but stopped: the membership nemesis's pool
    testbed_dir: str = ".dynamo/testbed"
    nodes_file: str | None = None
    store: str = "store"
    name: str | None = None
    #: The nodes' max_context_entries for this run (None: the node default), so that a key's actors
    #: outnumber it and context truncation runs under test (``--max-context-entries``).
    max_context_entries: int | None = None
    #: A secured cluster (``--tls``): mutual TLS between the nodes, the checker's clients over HTTPS.
    tls: bool = False

    def test_name(self) -> str:
        faults = "-".join(self.nemesis) or "none"
        return self.name or f"{self.workload}-{self.mode}-{faults}"


def build_cluster(options: Options, progress: Callable[[str], None]) -> tuple[Cluster, Any]:
    """The nodes to test; returns (cluster, the testbed to take down at the end or None)."""
    settings = {"mode": options.mode, "n": options.n, "r": options.r, "w": options.w, "partitions": 16}
    faketime = "clock" in options.nemesis
    if options.local:
        return local_cluster(options.local, settings, faketime, options.spares, node_config(options),
                             tls=options.tls), None
    created = None
    count = None
    if options.testbed:
        from dynactl.testbed import Testbed
        bed = Testbed(options.testbed_dir)
        nodes_file = str(Path(options.testbed_dir) / "nodes.json")
        existed = (Path(options.testbed_dir) / "testbed.json").exists()
        wanted = options.testbed + options.spares
        progress(f"testbed: {wanted} hosts in {options.testbed_dir}"
                 + (f" ({options.testbed} members, {options.spares} spares)" if options.spares else ""))
        # An existing testbed is grown if needed, never shrunk: its other hosts are someone's.
        if not existed or not Path(nodes_file).is_file() or len(load_hosts(nodes_file)) < wanted:
            try:
                bed.up(wanted)
            except BaseException:
                if not existed:
                    bed.down()
                raise
        created = None if existed else bed
        count = wanted
    else:
        nodes_file = str(options.nodes_file)
    try:
        hosts = [with_test_settings(host, settings, faketime, node_config(options))
                 for host in load_hosts(nodes_file)[:count]]
        if options.tls and options.testbed:
            # The testbed's hosts are namespaces of this machine: its file system is theirs.
            hosts = secure_hosts(hosts, Path(options.testbed_dir) / "certs")
        elif options.tls:
            # Hosts elsewhere have their certificates already (Ansible's dynamod_tls); the nodes file
            # (or an inventory's dynactl_tls) names how the checker reaches them: one set, parsed once.
            credentials = nodes_file_credentials(nodes_file) or host_credentials(hosts[0])
            hosts = [with_credentials(secured_config(host), credentials) for host in hosts]
    except BaseException:
        if created is not None:
            created.down()
        raise
    members = len(hosts) - options.spares  # the last --spares hosts are the spares
    if members < 1:
        if created is not None:
            created.down()
        raise ValueError(f"{len(hosts)} hosts leave no member beside {options.spares} spares")
    return Cluster(hosts=hosts[:members], spares=hosts[members:], control=SshHosts(hosts), faketime=faketime), created


def secured_config(host: Host) -> Host:
    """A host whose node.toml (rewritten by the run) names the TLS files Ansible or dynactl deploy
    put under its home (``dynamod_tls``), unless its extra config names TLS files itself."""
    if "tls_cert" in (host.var("dynamod_extra_config") or {}):
        return host
    return attrs.evolve(host, vars={**host.vars, "dynamod_tls": True})


def build_wheelhouse_for(cluster: Cluster) -> dict | None:
    """The project's wheels for hosts (None for a --local cluster, which runs from this venv)."""
    if cluster.local_dir is not None:
        return None
    from dynactl.package import DEFAULT_WHEELHOUSE, build_wheelhouse
    return build_wheelhouse(DEFAULT_WHEELHOUSE)


class Test:
    """One run: its directory, history, cluster and faults."""

    def __init__(self, options: Options, run_dir: Path, progress: Progress):
        self.options, self.run_dir, self.progress = options, run_dir, progress
        self.workload = workload(options.workload, options.keys, blind_cold=options.mode == "vclock")
        self.clock_start = time.monotonic_ns()
        self.history = HistoryWriter(run_dir / "history.jsonl", clock=self.now)
        self.next_process = 0
        self.problems: list[str] = []  # heal or quiesce failures: they make convergence undecidable
        self.cluster: Cluster | None = None
        self.faults: dict[str, Fault] = {}
        self.schedule: list[PlannedFault] = []
        self.skipped: set[Any] = set()  # ids of planned faults the nemesis skipped at run time
        self.test: dict[str, Any] = {**attrs.asdict(options), "name": options.test_name(),
                                     "max_context_entries": options.max_context_entries
                                     or SETTINGS_BY_NAME["max_context_entries"].default,
                                     "node_config": node_config(options),
                                     # The nodes' quorum deadline (the availability checker weighs
                                     # netem's delay and loss against it).
                                     "request_timeout": {**TEST_NODE_CONFIG, **node_config(options)}["request_timeout"],
                                     "keys": list(self.workload.keys), "start": datetime.now().isoformat()}

    def now(self) -> int:
        return time.monotonic_ns() - self.clock_start

    def seconds(self) -> float:
        """The checker's monotonic clock (the simulator's runs on simulated time)."""
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    def record(self, op: Op) -> Op:
        return self.history.append(op)

    def save_test(self) -> None:
        store.save_json(self.run_dir / "test.json", self.test)

    # -- phases -----------------------------------------------------------------------------------

    def main_phase(self) -> None:
        self.progress.started = time.monotonic()
        self.clock_start = time.monotonic_ns()  # history times count from the start of the workload
        stop_monitor = threading.Event()
        monitor = threading.Thread(target=self.monitor_replicas, args=(stop_monitor,), name="dynacheck-monitor",
                                   daemon=True)
        monitor.start()
        try:
            self._interpret(self.main_generator(), nemesis=bool(self.faults))
        finally:
            stop_monitor.set()
            monitor.join(30.0)

    def main_generator(self) -> Any:
        """The workload's ops and the fault schedule for ``time_limit``. One random source per
        generator, all from the seed: the ops, their spacing and the fault schedule each replay
        exactly, however the run's timing interleaves them."""
        options = self.options
        clients = Stagger(int(SECOND / options.rate), ClientOps(self.workload.make, seeded(options.seed, "ops")),
                          seeded(options.seed, "stagger"))
        generators = [TimeLimit(int(options.time_limit * SECOND), clients)]
        if self.faults:
            generators.append(TimeLimit(int(options.time_limit * SECOND), FaultSchedule(self.schedule)))
        return Concurrently(*generators)

    def monitor_replicas(self, stop: threading.Event) -> None:
        """Poll every hot key's replica on every node about every ``MONITOR_INTERVAL`` seconds while
        the workload runs (process ``monitor``): the replicas checker sees what each replica held in
        time, so a version that vanished from one replica while others still hold it is seen."""
        try:
            while not stop.is_set():
                version = self.cluster.membership_version  # the members changed: poll the new ones
                with self.cluster.clients(min(1.0, self.options.client_timeout)) as clients:
                    while self.cluster.membership_version == version and not stop.wait(MONITOR_INTERVAL):
                        for key in self.workload.keys:
                            for node, client in clients.items():
                                if stop.is_set():
                                    return
                                base = {"process": MONITOR, "f": "replica", "key": key, "node": node}
                                self.record({**base, "type": INVOKE, "value": None})
                                self.record({**base, **_replica_poll(client, key)})
        except Exception as exc:  # noqa: BLE001 - the monitor must never end the run
            self.progress.say(f"replica monitor stopped: {type(exc).__name__}: {exc}")

    def plan_faults(self) -> list[PlannedFault]:
        """The run's whole fault schedule, from the seed (saved in test.json as planned)."""
        options = self.options

        membership = self.faults.get("membership")

        def plan(kind: str, rng: random.Random, held: frozenset[str]) -> tuple[Any, set[str]]:
            fault = self.faults[kind]
            if fault.takes_nodes and membership is not None and fault is not membership:
                # Only members the plan has kept so far (a node that left is no one's to kill).
                held = held | (frozenset(self.cluster.ids) - membership.members_planned())
            value = fault.plan(rng, held) if fault.takes_nodes else fault.plan(rng)
            return value, set(value.get("nodes", ())) if fault.takes_nodes else set()

        nodes = len(self.cluster.ids)
        schedule = plan_schedule(sorted(self.faults), plan, seeded(options.seed, "nemesis"),
                                 int(options.time_limit * SECOND), int(options.nemesis_interval * SECOND),
                                 int(options.nemesis_duration * SECOND), held_limit=max(1, (nodes - 1) // 2),
                                 placed=lambda fault: self.faults[fault.fault].planned(fault.plan))
        self.test["fault_schedule"] = [fault.document() for fault in schedule]
        return schedule

    def _interpret(self, generator: Any, nemesis: bool) -> None:
        addresses = self.cluster.addresses()
        nodes = self.cluster.ids

        clients: dict[int, Client] = {}
        version = self.cluster.membership_version
        versions: dict[int, int] = {}  # the membership each thread's client was built for

        def executor_for(thread: Any) -> Callable[[Op], Op]:
            if thread == NEMESIS:
                return self._nemesis_op
            clients[thread] = Client(addresses, nodes[thread % len(nodes)], timeout=self.options.client_timeout,
                                     credentials=self.cluster.credentials)
            versions[thread] = version
            return lambda op: clients[thread](op)

        def follow_members(thread: int) -> None:
            """Between two ops of ``thread`` (on that thread): after a membership change its client
            talks to the current members, starting where it was if that node is still one."""
            now = self.cluster.membership_version
            if thread not in clients or versions.get(thread) == now:
                return
            members = self.cluster.addresses()
            if members:
                old = clients[thread]
                ids = list(members)
                start = old.current_node if old.current_node in members else ids[thread % len(ids)]
                old.close()
                clients[thread] = Client(members, start, timeout=self.options.client_timeout,
                                         credentials=self.cluster.credentials)
            versions[thread] = now

        def record(op: Op) -> Op:
            if op["type"] == INVOKE and isinstance(op.get("process"), int) and not op.get("node"):
                follow_members(op["process"] % self.options.concurrency)
                client = clients.get(op["process"] % self.options.concurrency)
                node = client.current_node if client else nodes[op["process"] % self.options.concurrency % len(nodes)]
                op = {**op, "node": node}
            return self.history.append(op)

        runtime = ThreadRuntime(executor_for, record)
        try:
            self.next_process = run(generator, runtime, self.options.concurrency, nemesis=nemesis,
                                    on_completion=self.progress.completed, first_process=self.next_process)
        finally:
            runtime.close()  # waits for ops in flight: nothing acts on the nodes after this

    def _nemesis_op(self, op: Op) -> Op:
        action, _, fault = op["f"].partition("-")
        target = self.faults[fault]
        try:
            if action == "start" and target.takes_nodes and fault != "membership" and isinstance(op["value"], dict):
                gone = sorted(set(op["value"].get("nodes", ())) - set(self.cluster.ids))
                if gone:  # the plan expected a membership change that did not run as planned
                    raise Skipped(f"{', '.join(gone)} not a member now (members {', '.join(self.cluster.ids)})")
            results = target.start(op["value"]) if action == "start" else target.stop(op["value"])
        except Skipped as skipped:
            self.skipped.add(op["value"].get("id") if isinstance(op["value"], dict) else None)
            return {"type": INFO, "skipped": str(skipped), "error": f"skipped: {skipped}"}
        if action == "stop" and isinstance(op["value"], dict) and op["value"].get("id") in self.skipped:
            results = {}  # nothing was done, so nothing is undone (its nodes may belong to another fault now)
        fields = completion(op["value"], results)
        if fault == "membership":  # what each step did (retries, the daemon's answer) goes into the history
            fields["value"]["detail"] = {node: result.stdout for node, result in results.items()
                                         if result.ok and result.stdout}
        return fields

    def heal(self) -> None:
        """Stop every fault, recorded as nemesis ops (idempotent: also run after a crash)."""
        for name, fault in self.faults.items():
            invoke = self.record({"process": NEMESIS, "type": INVOKE, "f": f"stop-{name}", "value": "heal"})
            try:
                results = fault.heal()
                fields = completion("heal", results)
                # A finding about a fault's start (a killed node restarted by something else) is
                # reported in the op, but the heal itself did its job.
                failed = not_undone(results)
            except Exception as exc:  # noqa: BLE001 - keep healing the other faults
                fields = {"type": INFO, "value": "heal", "error": f"{type(exc).__name__}: {exc}"}
                failed = [fields["error"]]
            if failed:
                self.problems.append(f"healing {name} failed: {'; '.join(failed)}")
            self.record({"process": NEMESIS, "f": invoke["f"], **fields})

    def quiesce(self) -> None:
        from dynactl.deploy import wait_deployed
        problems = wait_deployed(self.cluster.hosts, self.cluster.hosts, deadline_seconds=60.0)
        if problems:
            self.problems.append("after healing, not every node is healthy: " + "; ".join(problems.values()))
            self.progress.say(self.problems[-1])
        time.sleep(self.options.quiesce)

    def poll_convergence(self) -> bool:
        """Read every key's replica on every node, round after round, until every replica of every
        key holds the same siblings (or the timeout); each poll is a history op."""
        self.test["final_nodes"] = self.cluster.ids
        with self.cluster.clients(self.options.client_timeout) as clients:
            ring = ring_snapshot(clients)
            try:
                return self._poll_rounds(clients, ring_owners(ring))
            finally:
                self.snapshot_status("after", clients)
                final = ring_snapshot(clients)
                if ring is not None and final is not None and final.get("ownership") != ring.get("ownership"):
                    final["changed_during_polls"] = True
                self.test["final_ring"] = final

    def _poll_rounds(self, clients: dict[str, DynamoClient], owners: Any = None) -> bool:
        needed = min(self.options.n, len(clients))
        deadline = self.seconds() + self.options.convergence_timeout
        round_number = 0
        diverged = self.keys()
        while True:
            round_ops = []
            for key in diverged:
                for node, client in clients.items():
                    if self.seconds() > deadline:
                        return False
                    base = {"process": CONVERGENCE, "f": "replica", "key": key, "node": node,
                            "round": round_number}
                    self.record({**base, "type": INVOKE, "value": None})
                    round_ops.append(self.record({**base, **_replica_poll(client, key)}))
            # Keys that agree are settled (writes have stopped); only the others are polled again.
            diverged = [key for key, agreed in round_verdict(round_ops, needed, owners=owners).items() if not agreed]
            if not diverged:
                return True
            round_number += 1
            self.sleep(0.5)

    def snapshot_status(self, phase: str, clients: dict[str, DynamoClient]) -> None:
        """Each node's repair counters as history ops ("before": right after the final heal; "after":
        once the polls ended), so the convergence checker can say which mechanism (anti-entropy,
        hinted handoff) brought the replicas together."""
        for node, client in clients.items():
            base = {"process": CONVERGENCE, "f": "status", "node": node, "phase": phase}
            self.record({**base, "type": INVOKE, "value": None})
            try:
                status = client.status()
            except (ClientError, NodeUnavailable) as exc:
                self.record({**base, "type": FAIL, "error": str(exc)})
                continue
            self.record({**base, "type": OK, "value": {"anti_entropy": status.get("anti_entropy"),
                                                        "hinted_keys": status.get("hinted_keys"),
                                                        "tombstones": status.get("tombstones"),
                                                        "handoffs": status.get("handoffs")}})

    def keys(self) -> list[str]:
        """Every key of the run: the workload's hot keys and every other key an op touched."""
        touched = {op["key"] for op in self.history.ops if is_client(op) and op.get("key") is not None}
        return list(self.workload.keys) + sorted(touched - set(self.workload.keys))

    def final_reads(self) -> None:
        # Fresh processes: one that ended info in the main phase never runs again.
        self.next_process = -(-self.next_process // self.options.concurrency) * self.options.concurrency
        self._interpret(Phases(Once(self.workload.final_reads(self.keys(), self.cluster.ids))), nemesis=False)


#: Seconds a cart's tombstones wait before the nodes reap them (the node default, 60, outlasts a run):
#: a cold cart emptied mid-run is reaped before the end, so reaping is under test.
CART_TOMBSTONE_GRACE = 3.0


def node_config(options: Options) -> dict[str, Any]:
    """node.toml settings this run sets beyond the test defaults (saved in test.json)."""
    config: dict[str, Any] = {}
    if options.max_context_entries is not None:
        config["max_context_entries"] = options.max_context_entries
    if options.workload == "cart":
        config["tombstone_grace"] = CART_TOMBSTONE_GRACE
    return config


def seeded(seed: int, stream: str) -> random.Random:
    """The random source of one generator of a test (``Random`` hashes a str seed stably)."""
    return random.Random(f"{seed}-{stream}")


def ring_snapshot(clients: dict[str, DynamoClient]) -> dict[str, Any] | None:
    """The ring (``/admin/ring``: ``partitions``, ``n``, ``ownership``, ``preference_lists``) as the
    first member that answers has it, with the members whose ring differs or who did not answer
    (``disagree``); None when no member answers."""
    rings: dict[str, Any] = {}
    for node, client in clients.items():
        try:
            rings[node] = client.ring()
        except (ClientError, NodeUnavailable) as exc:
            rings[node] = f"no answer: {exc}"
    answered = [node for node, ring in rings.items() if isinstance(ring, dict)]
    if not answered:
        return None
    ring = rings[answered[0]]
    disagree = {node: other if isinstance(other, str) else "a different ownership"
                for node, other in rings.items() if not isinstance(other, dict) or other.get("ownership")
                != ring.get("ownership")}
    return {"from": answered[0], **{key: ring.get(key) for key in ("partitions", "n", "ownership", "preference_lists")},
            "members": list(clients), "disagree": disagree}


def _replica_poll(client: DynamoClient, key: str) -> Op:
    try:
        document = client.replica(key)
    except (ClientError, NodeUnavailable) as exc:
        return {"type": "fail", "error": str(exc)}
    siblings = [] if document is None else document.get("siblings", [])
    return {"type": OK, "value": [{**version_entry(base64.b64decode(s["value"]), s["clock"]),
                                    "deleted": bool(s.get("deleted"))} for s in siblings]}


def run_test(options: Options, stream: Any = sys.stderr) -> tuple[Path, dict[str, Any], int]:
    """Run one test; returns (run directory, results, exit code)."""
    store_dir = Path(options.store)
    run_dir = store.new_run_dir(store_dir, options.test_name(), datetime.now())
    store.update_latest(store_dir, run_dir)
    progress = Progress(options.time_limit, stream)
    test = Test(options, run_dir, progress)
    test.save_test()
    crashed: str | None = None
    testbed = None
    phases: dict[str, float] = {}

    def timed(name: str, step: Callable[[], Any]) -> Any:
        started = time.monotonic()
        progress.say(name)
        try:
            return step()
        finally:
            phases[name] = round(time.monotonic() - started, 3)

    try:
        test.cluster, testbed = timed("preparing nodes", lambda: build_cluster(options, progress.say))
        test.test.update(nodes=test.cluster.ids, spare_nodes=test.cluster.spare_ids,
                         node_addresses={host.name: host.http for host in test.cluster.roster})
        test.save_test()
        wheelhouse = timed("building the wheelhouse", lambda: build_wheelhouse_for(test.cluster))
        timed("clearing faults a killed run may have left", lambda: clear_faults(test.cluster))
        test.faults = make_faults(options.nemesis, test.cluster, options.w)

        def prepare_faults() -> None:
            for fault in test.faults.values():
                Cluster.require(fault.prepare(), f"preparing the {fault.name} nemesis")
        timed("setting up dynamod", lambda: test.cluster.setup(wheelhouse, progress.say, before_start=prepare_faults))
        for fault in test.faults.values():
            Cluster.require(fault.setup(), f"setting up the {fault.name} nemesis")
        test.schedule = test.plan_faults()
        test.save_test()
        timed(f"running {options.workload} for {options.time_limit:g}s", test.main_phase)
        timed("healing every fault", test.heal)
        with test.cluster.clients(options.client_timeout) as clients:
            test.snapshot_status("before", clients)
        timed("quiescing", test.quiesce)
        test.test["converged"] = timed("polling replicas until they converge", test.poll_convergence)
        timed("final reads", test.final_reads)
    except KeyboardInterrupt:
        crashed = "interrupted"
    except Exception as exc:  # noqa: BLE001 - the run still heals, tears down and stores
        crashed = f"{type(exc).__name__}: {exc}"
        (run_dir / "crash.txt").write_text(traceback.format_exc())
    finally:
        with signals_deferred():  # a second Ctrl-C must not cut the clean-up short
            if test.cluster is not None:
                _clean_up(test, run_dir, progress, crashed is not None)
            if testbed is not None:
                _attempt(progress, "taking the testbed down", testbed.down)
            test.history.close()
    test.test.update(phases=phases, crashed=crashed, problems=test.problems)
    test.save_test()
    progress.say("checking")
    results = judge(test.test, test.history.ops, check_all(test.test, test.history.ops, run_dir))
    store.save_json(run_dir / "results.json", results)
    store.update_latest(store_dir, run_dir)
    return run_dir, results, exit_code(results, crashed is not None)


def clear_faults(cluster: Cluster) -> None:
    """Jepsen heals at set-up too: partitions or netem a killed run left on hosts are removed."""
    if cluster.local_dir is None:
        for fault in make_faults(("partition", "netem"), cluster, w=2).values():  # they lose no copy
            fault.teardown()
            fault.heal()
        cluster.service("stop")  # a node may still run on a lazyfs mount a killed run left
        cluster.run(release_command)


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Ignore SIGINT and SIGTERM while cleaning up (only the main thread can)."""
    try:
        previous = {signum: signal.signal(signum, signal.SIG_IGN) for signum in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread
        previous = {}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _attempt(progress: Progress, name: str, step: Callable[[], Any]) -> None:
    try:
        step()
    except Exception as exc:  # noqa: BLE001 - report and go on: cleaning up must finish
        progress.say(f"{name} failed: {type(exc).__name__}: {exc}")


def _clean_up(test: Test, run_dir: Path, progress: Progress, after_crash: bool) -> None:
    """Heal, collect logs, tear down: each step runs even when the one before it fails."""
    steps = [("healing", test.heal)] if after_crash else []
    steps += [("removing fault rules", lambda: [fault.teardown() for fault in test.faults.values()]),
              ("collecting node logs", lambda: test.cluster.collect_logs(run_dir / "nodes")),
              ("tearing down", test.cluster.teardown),
              ("releasing fault mounts", lambda: [fault.release() for fault in test.faults.values()]),
              # A node that left keeps the mount a fault made on it while it was a member.
              ("releasing mounts on nodes that are not members", lambda: test.cluster.spares and test.cluster.run(
                  release_command, [host.name for host in test.cluster.spares + test.cluster.departing])),
              ("removing the local cluster's directory", test.cluster.remove_scratch),
              ("closing connections", test.cluster.control.close)]
    for name, step in steps:
        _attempt(progress, name, step)
