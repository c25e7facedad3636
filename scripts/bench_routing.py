"""``make bench-routing``: server-driven against client-driven coordination (Dynamo §6.4).

Starts a local 5-node cluster (N=3, R=2, W=2, fsync on every commit, 64 partitions), preloads
keys, then runs the same closed-loop load twice per round, alternating, for ``--rounds`` rounds:

* **server-driven**: each client thread sends every request to a node picked at random, as a
  load balancer would; a PUT that lands on a node holding none of the key's replicas (two nodes
  in five) is forwarded to a replica, one more hop;
* **client-driven**: each thread uses ``dynamod.routing.RoutedClient``, which sends each request
  to the first replica of its key in the ring it fetched.

The load is ``--threads`` threads, each a read-modify-write of a random key (GET, then PUT with
the read's context: the cart workload's add), 1 KiB values. Prints, per mode, RMWs per second,
PUT and GET latency p50/p99/p99.9 (client side) and the PUTs the nodes forwarded
(``dynamod_forwarded_puts_total``), and writes them to ``.dynamo/bench/routing.json``.

    .venv/bin/python scripts/bench_routing.py [--duration 10] [--threads 8] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench import latency_quantiles  # scripts/bench.py, beside this script

from dynactl.local import LocalCluster, port_is_free
from dynamod.client import DynamoClient
from dynamod.routing import RoutedClient

VALUE = b"v" * 1024


def forwarded(cluster: LocalCluster) -> int:
    total = 0
    for node in cluster.nodes:
        for line in cluster.client(node).metrics().splitlines():
            if line.startswith("dynamod_forwarded_puts_total "):
                total += int(float(line.split()[1]))
    return total


def run_load(make_client, keys: int, threads: int, duration: float, seed: int) -> dict:
    """``threads`` closed-loop read-modify-write loops for ``duration`` seconds."""
    gets: list[float] = []
    puts: list[float] = []
    errors = [0]
    lock = threading.Lock()
    stop_at = time.monotonic() + duration

    def loop(index: int) -> None:
        client = make_client(index)
        rng = random.Random(seed * 1000 + index)
        mine_gets, mine_puts = [], []
        while time.monotonic() < stop_at:
            key = f"bench-{rng.randrange(keys)}"
            try:
                start = time.perf_counter()
                read = client.get(key)
                middle = time.perf_counter()
                client.put(key, VALUE, context=read.context)
                end = time.perf_counter()
            except Exception:  # noqa: BLE001 - counted; the bench goes on
                with lock:
                    errors[0] += 1
                continue
            mine_gets.append(middle - start)
            mine_puts.append(end - middle)
        client.close()
        with lock:
            gets.extend(mine_gets)
            puts.extend(mine_puts)

    workers = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return {"rmw_per_s": len(puts) / duration, "errors": errors[0],
            "put": latency_quantiles(puts), "get": latency_quantiles(gets)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    parser.add_argument("--threads", type=int, default=8, help="client threads (closed loop)")
    parser.add_argument("--rounds", type=int, default=2, help="server/client-driven pairs, alternated")
    parser.add_argument("--keys", type=int, default=1000)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="dynamo-bench-routing-"))
    cluster = LocalCluster(str(workdir / "cluster"))
    base = next(b for b in range(22000, 32000, 100)
                if all(port_is_free(b + i) and port_is_free(b - 1000 + i) for i in range(1, 6)))
    cluster.create(5, base_port=base, settings={"n": 3, "r": 2, "w": 2, "partitions": 64, "sync": True,
                                                "mode": "vclock", "log_level": "warn"})
    results: dict[str, list[dict]] = {"server_driven": [], "client_driven": []}
    try:
        for node in cluster.nodes:
            cluster.start(node)
        cluster.wait_until_serving(cluster.nodes)
        addresses = [node.http for node in cluster.nodes]
        seeder = RoutedClient(addresses)
        for i in range(args.keys):
            seeder.put(f"bench-{i}", VALUE)
        seeder.close()
        modes = {
            "server_driven": lambda i: RandomNodeClient(addresses, random.Random(i)),
            "client_driven": lambda i: RoutedClient(addresses),
        }
        print(f"5 nodes, N=3 R=2 W=2, fsync; {args.threads} threads of GET+PUT (read-modify-write), "
              f"{args.duration:g}s per run", flush=True)
        for round_index in range(args.rounds):
            for mode, make_client in modes.items():
                before = forwarded(cluster)
                figures = run_load(make_client, args.keys, args.threads, args.duration, round_index)
                figures["forwarded_puts"] = forwarded(cluster) - before
                results[mode].append(figures)
                print(f"  {mode:<14} {figures['rmw_per_s']:>7.0f} rmw/s  PUT p50 {figures['put']['p50_ms']:.1f} "
                      f"p99 {figures['put']['p99_ms']:.1f} p99.9 {figures['put']['p999_ms']:.1f} ms  "
                      f"GET p50 {figures['get']['p50_ms']:.1f} p99 {figures['get']['p99_ms']:.1f} "
                      f"p99.9 {figures['get']['p999_ms']:.1f} ms  forwarded {figures['forwarded_puts']}  "
                      f"errors {figures['errors']}", flush=True)
    finally:
        for node in cluster.nodes:
            cluster.stop(node)
        shutil.rmtree(workdir, ignore_errors=True)
    output = Path(".dynamo/bench/routing.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"results: {output}")
    return 0


class RandomNodeClient:
    """Each request to a node picked at random (a load balancer in front of the cluster)."""

    def __init__(self, addresses: list[str], rng: random.Random):
        self.clients = [DynamoClient(address) for address in addresses]
        self.rng = rng

    def get(self, key, r=None):
        return self.rng.choice(self.clients).get(key, r)

    def put(self, key, value, context=None, w=None):
        return self.rng.choice(self.clients).put(key, value, context, w)

    def close(self) -> None:
        for client in self.clients:
            client.close()


if __name__ == "__main__":
    sys.exit(main())
