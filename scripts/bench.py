"""``make bench``: throughput and latency of a local 3-node cluster, with two yardsticks in the same run.

Runs wrk (one process per node, together at least 48 connections) with 1 KiB values, 50/50 GET of
preloaded keys and PUT of fresh keys, against:

1. dynamod, 3 nodes, N=3 R=2 W=2, Berkeley DB with fsync on every commit (peak);
2. the same cluster at half of that peak rate (latency under moderate load), then a cart-like
   light load: 40 read-modify-writes a second (GET a hot key, PUT it back with one more item and
   the read's context) from 4 paced threads, timed whole;
3. one twisted.web process answering a trivial GET (this machine's Python ceiling);
4. a 3-node etcd cluster on loopback through its v3 JSON gateway, same mix (what a user would
   otherwise pick).

The peak of dynamod and of etcd is the best of one run at each connection count of
``--connections`` (48, 96 and 144 by default): both wait for an fsync before answering a write, so
a closed-loop client with too few connections measures that wait, not the store's capacity (at 48
connections the dynamod nodes left 10% of the CPU idle). Every run of the sweep is printed.

With ``--tls`` the dynamod cluster is measured again secured (mutual TLS between the nodes,
HTTPS with a bearer token for wrk), same mix, same connection counts, right after the plain one,
and the cost is printed as the ratio of the two peaks and p99.9 at each.

Prints ops/s and p50/p99/p99.9 for each, the dynamod nodes' CPU per operation (user + system
time of the three node processes from /proc, divided by the requests answered), where a request's
time goes at half of peak (the nodes' ``dynamod_request_stage_seconds`` histograms scraped before
and after that run: p50/p99/p99.9 per stage, interpolated inside buckets), and writes them to
``.dynamo/bench/results.json``.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from dynactl.certs import add_token
from dynactl.local import LocalCluster, port_is_free
from dynactl.stats import GC_FAMILY, gc_table, stage_delta, stage_histograms, stage_sum, stage_table
from dynamod.client import DynamoClient
from dynamod.polling import wait_until
from dynamod.security.identity import Role

HERE = Path(__file__).resolve().parent / "bench"
VALUE = b"v" * 1024


def free_ports(count: int, start: int) -> list[int]:
    ports, candidate = [], start
    while len(ports) < count:
        if port_is_free(candidate):
            ports.append(candidate)
        candidate += 1
    return ports


def merge_quantiles(runs: list[dict]) -> dict[str, float]:
    """Combine wrk runs: their quantile samples weighted by request count."""
    samples = []
    for run in runs:
        weight = run["requests"] / len(run["quantiles_us"])
        samples += [(q, weight) for q in run["quantiles_us"]]
    samples.sort()
    total = sum(w for _, w in samples)

    def quantile(fraction: float) -> float:
        seen = 0.0
        for value, weight in samples:
            seen += weight
            if seen >= fraction * total:
                return value / 1000.0
        return samples[-1][0] / 1000.0

    return {"p50_ms": quantile(0.50), "p99_ms": quantile(0.99), "p999_ms": quantile(0.999)}


def run_wrk(targets: list[str], script: str, args: list[str], duration: int, connections: int,
            scheme: str = "http", token: str = "") -> dict:
    """Run one wrk per target in parallel; returns combined figures."""
    env = dict(os.environ, BENCH_LUA_DIR=str(HERE), BENCH_TOKEN=token)
    per_target = max(1, connections // len(targets))
    processes = [
        subprocess.Popen(["wrk", "-t1", f"-c{per_target}", f"-d{duration}s", "--timeout", "10s",
                          "-s", str(HERE / script), f"{scheme}://{target}/", "--", *args],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        for target in targets
    ]
    runs = []
    for process in processes:
        output, _ = process.communicate(timeout=duration + 60)
        line = next((ln for ln in output.splitlines() if ln.startswith("BENCH_RESULT ")), None)
        if line is None:
            raise RuntimeError(f"wrk printed no result:\n{output}")
        runs.append(json.loads(line[len("BENCH_RESULT "):]))
    requests = sum(r["requests"] for r in runs)
    seconds = max(r["duration_us"] for r in runs) / 1e6
    errors = sum(r[k] for r in runs for k in ("connect_errors", "read_errors", "write_errors",
                                               "status_errors", "timeouts"))
    return {"ops_per_s": requests / seconds, "requests": requests, "errors": errors,
            "connections": per_target * len(targets), **merge_quantiles(runs)}


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes so far (``/proc/PID/stat`` fields 14 and 15)."""
    ticks = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15; 3 is fields[0])
    return ticks / os.sysconf("SC_CLK_TCK")


def scrape_histograms(clients: list[DynamoClient]) -> list[tuple]:
    """Every node's stage histograms and garbage-collector pauses now."""
    scraped = []
    for client in clients:
        text = client.metrics()
        scraped.append((stage_histograms(text), stage_histograms(text, GC_FAMILY, ("generation",))))
    return scraped


def window(before: list[tuple], after: list[tuple], which: int):
    """What all the nodes observed between two scrapes (``which``: 0 stages, 1 GC pauses)."""
    return stage_sum([stage_delta(b[which], a[which]) for b, a in zip(before, after, strict=True)])


#: The cart-like light load of the aims: read-modify-writes per second, over this many hot keys.
RMW_RATE, RMW_KEYS, RMW_THREADS = 40, 20, 4


def bench_rmw(clients: list[DynamoClient], duration: float, rate: int = RMW_RATE) -> dict:
    """A cart-like read-modify-write (GET a hot key, PUT one more item with the read's context) at
    ``rate`` per second from ``RMW_THREADS`` paced threads, each on its own node in turn; the time
    of each whole GET+PUT."""
    import threading
    import time

    samples: list[float] = []
    errors = [0]
    lock = threading.Lock()
    start = time.monotonic() + 0.1
    interval = RMW_THREADS / rate

    def loop(index: int) -> None:
        client = DynamoClient(clients[index % len(clients)].address, credentials=clients[0].credentials)
        mine, step = [], 0
        while (due := start + index / rate + step * interval) < start + duration:
            step += 1
            time.sleep(max(0.0, due - time.monotonic()))
            key = f"cart-{(index + step * RMW_THREADS) % RMW_KEYS}"
            began = time.perf_counter()
            try:
                read = client.get(key)
                items = b",".join(sorted({*b",".join(read.siblings).split(b","), str(step).encode()} - {b""}))
                client.put(key, items[-512:], context=read.context)
            except Exception:  # noqa: BLE001 - counted; the bench goes on
                errors[0] += 1
                continue
            mine.append(time.perf_counter() - began)
        client.close()
        with lock:
            samples.extend(mine)

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(RMW_THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"rate": rate, "rmw": len(samples), "errors": errors[0], **latency_quantiles(samples)}


def latency_quantiles(seconds: list[float]) -> dict[str, float]:
    """``p50_ms``, ``p99_ms`` and ``p999_ms`` of durations in seconds (nearest rank, as the checker's
    perf figures; NaN when there are none)."""
    import numpy as np

    from dynacheck.checkers.perf import quantiles

    found = quantiles(np.array(seconds) * 1000, (0.5, 0.99, 0.999))
    return {name: found.get(q, float("nan")) for name, q in (("p50_ms", "0.5"), ("p99_ms", "0.99"),
                                                             ("p999_ms", "0.999"))}


def preload(put_one, count: int) -> None:
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(put_one, range(count)))


def sweep(name: str, levels: list[int], run) -> dict:
    """``run(connections)`` at every level; the best run, with every run under ``sweep``."""
    runs = []
    for connections in levels:
        figures = run(connections)
        cpu = f" cpu {figures['cpu_us_per_op']:.0f} us/op" if "cpu_us_per_op" in figures else ""
        print(f"  {name:<22}{connections:>5} connections {figures['ops_per_s']:>8.0f} ops/s "
              f"p50 {figures['p50_ms']:.1f} p99 {figures['p99_ms']:.1f} p99.9 {figures['p999_ms']:.1f} ms{cpu}",
              flush=True)
        runs.append(figures)
    best = max(runs, key=lambda figures: figures["ops_per_s"])
    return {**best, "sweep": runs}


def bench_dynamo(workdir: Path, duration: int, levels: list[int], keys: int,
                 extra: dict, tls: bool = False) -> tuple[dict, dict, dict]:
    name = "dynamod-tls" if tls else "dynamod"
    directory = workdir / name
    cluster = LocalCluster(str(directory))
    base = next(b for b in range(18000, 40000, 100)
                if all(port_is_free(b + i) and port_is_free(b - 1000 + i) for i in range(1, 4)))
    settings = {"n": 3, "r": 2, "w": 2, "partitions": 64, "sync": True, "mode": "vclock", "log_level": "warn",
                **extra}
    if tls:  # wrk has no client certificates: it authenticates with a writer's bearer token
        settings["auth_tokens"] = str(directory / "certs" / "tokens")
    cluster.create(3, base_port=base, settings=settings, tls=tls)
    token = add_token(directory / "certs", "bench", Role.WRITER) if tls else ""
    try:
        for node in cluster.nodes:
            cluster.start(node)
        cluster.wait_until_serving(cluster.nodes)
        targets = [node.http for node in cluster.nodes]
        scheme = "https" if tls else "http"

        def put_one(i: int) -> None:
            DynamoClient(targets[i % 3], credentials=cluster.credentials()).put(f"pre-{i}", VALUE)

        preload(put_one, keys)
        pids = [node.pid for node in cluster.nodes]
        clients = [DynamoClient(target, credentials=cluster.credentials()) for target in targets]

        def measured(connections: int, args: list[str]) -> dict:
            """One wrk run, with the nodes' CPU per answered request and their stage histograms."""
            cpu, before = cpu_seconds(pids), scrape_histograms(clients)
            figures = run_wrk(targets, "dynamo.lua", [str(keys), *args], duration, connections, scheme, token)
            figures["cpu_us_per_op"] = 1e6 * (cpu_seconds(pids) - cpu) / max(1, figures["requests"])
            after = scrape_histograms(clients)
            figures["stages"] = stage_table(window(before, after, 0))
            figures["gc_pauses"] = gc_table(window(before, after, 1))
            return figures

        peak = sweep(name, levels, lambda connections: measured(connections, [f"peak{connections}"]))
        # Half of peak: each connection pauses so the offered rate is about peak / 2.
        pause_ms = max(1, round(1000 * peak["connections"] / (peak["ops_per_s"] / 2)))
        half = measured(peak["connections"], ["half", str(pause_ms)])
        half["offered_ops_per_s"] = peak["ops_per_s"] / 2
        rmw = bench_rmw(clients, duration)
        print(f"  {name + ' cart rmw':<22}{rmw['rate']:>5} rmw/s  {rmw['rmw']:>8} done p50 {rmw['p50_ms']:.1f} "
              f"p99 {rmw['p99_ms']:.1f} p99.9 {rmw['p999_ms']:.1f} ms errors {rmw['errors']}", flush=True)
        return peak, half, rmw
    finally:
        for node in cluster.nodes:
            cluster.stop(node)


TRIVIAL_SERVER = """
import sys
from twisted.internet import reactor
from twisted.web import resource, server
class Ok(resource.Resource):
    isLeaf = True
    def render_GET(self, request):
        return b"ok"
site = server.Site(Ok())
site.log = lambda request: None
reactor.listenTCP(int(sys.argv[1]), site, interface="127.0.0.1")
reactor.run()
"""


def bench_twisted(duration: int, connections: int) -> dict:
    (port,) = free_ports(1, 19500)
    process = subprocess.Popen([sys.executable, "-c", TRIVIAL_SERVER, str(port)])
    try:
        _wait_http(f"http://127.0.0.1:{port}/")
        return run_wrk([f"127.0.0.1:{port}"], "trivial.lua", [], duration, connections)
    finally:
        process.terminate()
        process.wait(10)


def _wait_http(url: str, deadline: float = 30.0, expect: bytes | None = None) -> None:
    def up() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                return expect is None or expect in response.read()
        except OSError:
            return False

    if not wait_until(up, deadline, interval=0.1):
        raise RuntimeError(f"{url} did not come up")


def bench_etcd(workdir: Path, duration: int, levels: list[int], keys: int) -> dict | None:
    etcd = shutil.which("etcd")
    if etcd is None:
        print("etcd not installed (Debian package etcd-server): skipping the etcd comparison", flush=True)
        return None
    ports = free_ports(6, 23790)
    clients, peers = ports[:3], ports[3:]
    initial = ",".join(f"e{i}=http://127.0.0.1:{peers[i]}" for i in range(3))
    processes = []
    try:
        for i in range(3):
            processes.append(subprocess.Popen(
                [etcd, "--name", f"e{i}", "--data-dir", str(workdir / f"etcd{i}"),
                 "--listen-client-urls", f"http://127.0.0.1:{clients[i]}",
                 "--advertise-client-urls", f"http://127.0.0.1:{clients[i]}",
                 "--listen-peer-urls", f"http://127.0.0.1:{peers[i]}",
                 "--initial-advertise-peer-urls", f"http://127.0.0.1:{peers[i]}",
                 "--initial-cluster", initial, "--initial-cluster-state", "new", "--log-level", "error"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for port in clients:
            _wait_http(f"http://127.0.0.1:{port}/health", expect=b'"true"')
        value = base64.b64encode(VALUE).decode()

        def put_one(i: int) -> None:
            connection = http.client.HTTPConnection("127.0.0.1", clients[i % 3], timeout=10)
            body = json.dumps({"key": base64.b64encode(f"pre-{i}".encode()).decode(), "value": value})
            connection.request("POST", "/v3/kv/put", body=body, headers={"Content-Type": "application/json"})
            connection.getresponse().read()
            connection.close()

        preload(put_one, keys)
        return sweep("etcd", levels, lambda connections: run_wrk(
            [f"127.0.0.1:{p}" for p in clients], "etcd.lua", [str(keys), f"peak{connections}"], duration, connections))
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=20, help="seconds per measurement")
    parser.add_argument("--connections", default="48,96,144",
                        help="connection counts in total (each >= 48, comma-separated): the peak is the best")
    parser.add_argument("--keys", type=int, default=2000, help="preloaded keys read by GETs")
    parser.add_argument("--skip-etcd", action="store_true")
    parser.add_argument("--skip-baselines", action="store_true", help="measure dynamod only")
    parser.add_argument("--tls", action="store_true",
                        help="also measure the cluster secured (mutual TLS, HTTPS with a bearer token)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra node setting (TOML value), e.g. --set read_threads=0")
    args = parser.parse_args()
    try:
        levels = sorted({int(level) for level in args.connections.split(",")})
    except ValueError:
        parser.error("--connections takes comma-separated numbers")
    if levels[0] < 48:
        parser.error("every connection count must be at least 48")
    if shutil.which("wrk") is None:
        print("wrk is not installed (Debian package wrk; make bench installs it as root)", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="dynamo-bench-"))
    results: dict[str, dict | None] = {}
    try:
        print(f"dynamod 3 nodes, N=3 R=2 W=2, fsync, {args.connections} connections, {args.duration}s each ...",
              flush=True)
        import tomllib

        extra = tomllib.loads("\n".join(args.set))
        results["dynamod"], results["dynamod_half_peak"], results["dynamod_cart_rmw"] = bench_dynamo(
            workdir, args.duration, levels, args.keys, extra)
        if args.tls:
            print("dynamod secured: mutual TLS between nodes, HTTPS with a bearer token ...", flush=True)
            results["dynamod_tls"], results["dynamod_tls_half_peak"], results["dynamod_tls_cart_rmw"] = bench_dynamo(
                workdir, args.duration, levels, args.keys, extra, tls=True)
        if not args.skip_baselines:
            print("twisted.web trivial GET ...", flush=True)
            results["twisted_web_trivial"] = bench_twisted(args.duration, levels[0])
        if not (args.skip_etcd or args.skip_baselines):
            print("etcd 3 nodes, JSON gateway ...", flush=True)
            results["etcd"] = bench_etcd(workdir, args.duration, levels, args.keys)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print()
    print(f"{'target':<24}{'conns':>6}{'ops/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'p99.9 ms':>10}{'errors':>8}"
          f"{'cpu us/op':>11}")
    for name, figures in results.items():
        if figures is None or "ops_per_s" not in figures:
            continue
        cpu = f"{figures['cpu_us_per_op']:>11.0f}" if "cpu_us_per_op" in figures else f"{'-':>11}"
        print(f"{name:<24}{figures['connections']:>6}{figures['ops_per_s']:>10.0f}{figures['p50_ms']:>10.2f}"
              f"{figures['p99_ms']:>10.2f}{figures['p999_ms']:>10.2f}{figures['errors']:>8}{cpu}")
    for name in ("dynamod_half_peak", "dynamod_tls_half_peak"):
        if results.get(name):
            print_stages(name, results[name]["stages"])
            pauses = ", ".join(f"gen{generation} {g['count']} ({g['total_s']:.2f} s, p99 {g['p99_ms']:g} ms, "
                               f"longest <= {g['longest_le_ms']} ms)"
                               for generation, g in results[name]["gc_pauses"].items())
            print(f"  garbage collections (all nodes): {pauses or 'none'}")
    if results.get("dynamod_tls"):
        plain, secured = results["dynamod"], results["dynamod_tls"]
        print(f"\nTLS cost: peak {secured['ops_per_s']:.0f} vs {plain['ops_per_s']:.0f} ops/s "
              f"({secured['ops_per_s'] / plain['ops_per_s']:.2f}x), p99.9 {secured['p999_ms']:.1f} vs "
              f"{plain['p999_ms']:.1f} ms; at half of peak p99.9 {results['dynamod_tls_half_peak']['p999_ms']:.1f} "
              f"vs {results['dynamod_half_peak']['p999_ms']:.1f} ms")
    print_aims(results)
    output = Path(".dynamo/bench/results.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"results: {output}")
    return 0


def print_stages(name: str, stages: dict) -> None:
    """The per-stage table of one run (all three nodes' requests together)."""
    print(f"\nwhere a request's time goes, {name} (server side, ms, interpolated in buckets):")
    print(f"  {'op':<8}{'stage':<12}{'count':>9}{'mean':>9}{'p50':>9}{'p99':>9}{'p99.9':>9}")
    for op, by_stage in stages.items():
        for stage, figures in by_stage.items():
            print(f"  {op:<8}{stage:<12}{figures['count']:>9}{figures['mean_ms']:>9.2f}{figures['p50_ms']:>9.2f}"
                  f"{figures['p99_ms']:>9.2f}{figures['p999_ms']:>9.2f}")


def print_aims(results: dict) -> None:
    """Issue 17's aims that this run measures, each with its figure."""
    print("\naims:")
    peak, half = results["dynamod"], results["dynamod_half_peak"]
    if results.get("etcd"):
        ratio = peak["ops_per_s"] / results["etcd"]["ops_per_s"]
        print(f"  dynamod / etcd throughput >= 1.5x: {ratio:.2f}x ({peak['ops_per_s']:.0f} vs "
              f"{results['etcd']['ops_per_s']:.0f} ops/s) {'met' if ratio >= 1.5 else 'NOT met'}")
    print(f"  p99.9 <= 50 ms at half of peak: {half['p999_ms']:.1f} ms "
          f"{'met' if half['p999_ms'] <= 50 else 'NOT met'}")
    rmw = results["dynamod_cart_rmw"]
    print(f"  p99 <= 20 ms for a cart-like read-modify-write at {rmw['rate']} ops/s: {rmw['p99_ms']:.1f} ms "
          f"{'met' if rmw['p99_ms'] <= 20 else 'NOT met'}")
    print(f"  node CPU per op <= 200 us: {peak['cpu_us_per_op']:.0f} us at peak, {half['cpu_us_per_op']:.0f} us "
          f"at half {'met' if peak['cpu_us_per_op'] <= 200 else 'NOT met'}")


if __name__ == "__main__":
    sys.exit(main())
