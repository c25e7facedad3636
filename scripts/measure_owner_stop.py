"""PUTs refused right after a clean stop of one owner (issue 13), in alternating rounds per daemon tree.

Each round starts a fresh local 5-node cluster (N=3, R=2, W=3, the default heartbeat and timeout),
runs writers through the four other nodes (each key has the stopped node among its owners, so every
writer is sometimes the key's owner and sometimes not), sends SIGTERM (or ``--signal KILL``) to that
owner, and counts the PUTs invoked in the next WINDOW seconds and those refused, and when the owner's
process exited. With several ``--tree NAME=DAEMON_DIR``
the rounds alternate between the trees (the nodes import ``dynamod`` from DAEMON_DIR), so the
compared runs share the machine's conditions.

Usage: ``.venv/bin/python scripts/measure_owner_stop.py [--rounds 3] [--window 2.0] [--signal TERM|KILL]
[--tree before=/tmp/before/daemon --tree after=daemon]`` (a tree of an older commit:
``git archive COMMIT daemon | tar -x -C /tmp/before``).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import tempfile
import threading
import time
from collections import Counter

from dynactl.local import LocalCluster, port_is_free
from dynamod.client import ClientError, DynamoClient
from dynamod.core.ring import Ring

STOPPED = "n4"
SETTINGS = {"n": 3, "r": 2, "w": 3, "partitions": 32, "mode": "vclock", "sync": True}


def free_base_port(count: int) -> int:
    """A base port whose HTTP (base+i) and peer (base-1000+i) ports are all free."""
    while True:
        base = random.randrange(41000, 59000, 10)
        if all(port_is_free(p) for i in range(1, count + 1) for p in (base + i, base - 1000 + i)):
            return base


def one_round(daemon_dir: str, window: float, writers_per_node: int, pause: float,
              signum: int = signal.SIGTERM) -> dict[str, float]:
    """One cluster, one signal to an owner (SIGTERM unless told); the PUTs invoked within ``window``
    seconds of it, by outcome, and how long the process took to exit."""
    os.environ["PYTHONPATH"] = os.path.abspath(daemon_dir)  # the nodes' ``dynamod``
    directory = tempfile.mkdtemp(prefix="dynamod-owner-stop-")
    cluster = LocalCluster(directory)
    try:
        cluster.create(5, base_port=free_base_port(5), settings=SETTINGS)
        for node in cluster.nodes:
            cluster.start(node)
        cluster.wait_until_serving(cluster.nodes)
        ring = Ring(DynamoClient(cluster.node("n1").http).ring()["ownership"])
        keys = [k for k in (f"k{i}".encode() for i in range(400)) if STOPPED in ring.preference_list(k, 3)]
        outcomes: list[tuple[float, bool, str]] = []
        halt = threading.Event()

        def write(node: str, offset: int) -> None:
            client = DynamoClient(cluster.node(node).http, timeout=10)
            i = offset
            while not halt.is_set():
                key = keys[i % len(keys)]
                role = "owner" if node in ring.preference_list(key, 3) else "other"
                started = time.monotonic()
                try:
                    client.put(key, b"v%d" % i, w=3)
                    outcomes.append((started, True, role))
                except ClientError:
                    outcomes.append((started, False, role))
                i += 7
                time.sleep(pause)  # a refusal is fast: without a pause it would be counted many times over

        threads = [threading.Thread(target=write, args=(node.id, 100 * j + index), daemon=True)
                   for index, node in enumerate(cluster.nodes) if node.id != STOPPED
                   for j in range(writers_per_node)]
        for thread in threads:
            thread.start()
        time.sleep(1.5)
        sigterm_at = time.monotonic()
        cluster.signal(cluster.node(STOPPED), signum)
        exited_after = None
        while time.monotonic() < sigterm_at + window + 0.5:
            if exited_after is None and not cluster.running(cluster.node(STOPPED)):
                exited_after = time.monotonic() - sigterm_at
            time.sleep(0.005)
        halt.set()
        for thread in threads:
            thread.join()
        counts: Counter[str] = Counter()
        for started, ok, role in outcomes:
            if sigterm_at <= started < sigterm_at + window:
                counts["puts"] += 1
                counts[f"{role}_puts"] += 1
                if not ok:
                    counts["refused"] += 1
                    counts[f"{role}_refused"] += 1
        refused_at = [started - sigterm_at for started, ok, _ in outcomes if not ok and started >= sigterm_at]
        return {**counts, "last_refusal": max(refused_at, default=0.0), "exited_after": exited_after or -1.0}
    finally:
        for node in cluster.nodes:
            if cluster.running(node):
                cluster.kill(node)
        shutil.rmtree(directory, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--window", type=float, default=2.0)
    parser.add_argument("--writers-per-node", type=int, default=2)
    parser.add_argument("--pause", type=float, default=0.01, help="seconds each writer waits between PUTs")
    parser.add_argument("--signal", default="TERM", choices=["TERM", "KILL"], help="how the owner is stopped")
    parser.add_argument("--tree", action="append", default=[], help="NAME=DAEMON_DIR (repeatable)")
    options = parser.parse_args()
    trees = [tuple(t.split("=", 1)) for t in options.tree] or [("this", "daemon")]
    totals: dict[str, Counter[str]] = {name: Counter() for name, _ in trees}
    for round_ in range(options.rounds):
        for name, daemon_dir in trees:
            counts = one_round(daemon_dir, options.window, options.writers_per_node, options.pause,
                               getattr(signal, f"SIG{options.signal}"))
            totals[name].update({k: v for k, v in counts.items() if k not in ("last_refusal", "exited_after")})
            print(f"round {round_ + 1} {name}: {counts.get('refused', 0)} of {counts.get('puts', 0)} PUTs refused "
                  f"in {options.window:.1f}s after SIG{options.signal} "
                  f"(through an owner {counts.get('owner_refused', 0)}/"
                  f"{counts.get('owner_puts', 0)}, through another node {counts.get('other_refused', 0)}/"
                  f"{counts.get('other_puts', 0)}); last refusal {counts['last_refusal']:.2f}s after it; "
                  f"exited after {counts['exited_after']:.2f}s", flush=True)
    for name, total in totals.items():
        print(f"{name}: {total.get('refused', 0)} of {total.get('puts', 0)} PUTs refused over {options.rounds} rounds")


if __name__ == "__main__":
    main()
