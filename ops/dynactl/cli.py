"""``dynactl``: the operator's command line (CONTRACT.md).

Key-value commands talk to any node (``--node``, ``$DYNACTL_NODE``, else the first node of
``.dynamo/local/cluster.json``); ``local`` manages clusters of processes on this machine.
Exit codes: 0 success, 1 the answer is "no" (not found, quorum not met), 2 usage or input error,
3 internal error (node unreachable, unexpected failure).
"""

from __future__ import annotations

import base64
import os
import shutil
import sys
from typing import Any

import click

from dynactl.local import DEFAULT_DIR, LocalCluster, LocalClusterError
from dynactl.output import EXIT_INTERNAL, EXIT_NO, EXIT_USAGE, Output, show_value
from dynamod.client import ClientError, DynamoClient, NodeUnavailable, QuorumError


class Context:
    """What every subcommand gets: the output format and how to reach a node."""

    def __init__(self, node: str | None, fmt: str):
        self.node_option = node
        self.out = Output(fmt)

    def node_address(self) -> str:
        if self.node_option:
            return self.node_option
        if os.environ.get("DYNACTL_NODE"):
            return os.environ["DYNACTL_NODE"]
        try:
            cluster = LocalCluster(DEFAULT_DIR).load()
        except LocalClusterError:
            self.out.fail(EXIT_USAGE, "no node given: use --node HOST:PORT, set DYNACTL_NODE, "
                                      "or start a local cluster (dynactl local up)")
        return cluster.nodes[0].http

    def client(self) -> DynamoClient:
        try:
            return DynamoClient(self.node_address())
        except ValueError as exc:
            self.out.fail(EXIT_USAGE, str(exc))


pass_context = click.make_pass_decorator(Context)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("--node", metavar="HOST:PORT", help="node to talk to [default: $DYNACTL_NODE or the local cluster]")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True,
              help="table for people, json for scripts (one document on stdout)")
@click.pass_context
def cli(ctx: click.Context, node: str | None, fmt: str) -> None:
    """Operate a dynamod cluster."""
    ctx.obj = Context(node, fmt)


def _client_call(ctx: Context, action: Any) -> Any:
    """Run one client call, mapping failures to the CONTRACT's exit codes."""
    try:
        return action()
    except QuorumError as exc:
        ctx.out.fail(EXIT_NO, f"{exc.body.get('error')} (needed {exc.needed}, acks {exc.acks})",
                     needed=exc.needed, acks=exc.acks)
    except ClientError as exc:
        code = EXIT_USAGE if 400 <= exc.status < 500 else EXIT_INTERNAL
        ctx.out.fail(code, f"{exc.body.get('error', exc)} (HTTP {exc.status})", status=exc.status)
    except NodeUnavailable as exc:
        ctx.out.fail(EXIT_INTERNAL, f"node unreachable: {exc}")


# -- key-value ---------------------------------------------------------------------------------


@cli.command()
@click.argument("key")
@click.option("--r", "r", type=int, help="replies to wait for (1..N)")
@pass_context
def get(ctx: Context, key: str, r: int | None) -> None:
    """Read KEY: every concurrent value (sibling) and the context to write back with."""
    client = ctx.client()
    result = _client_call(ctx, lambda: client.get(key, r=r))
    document = {"key": key, "found": result.found, "context": result.context,
                "siblings": [base64.b64encode(v).decode("ascii") for v in result.siblings]}
    rows = [[i + 1, show_value(v)] for i, v in enumerate(result.siblings)]
    text = f"context: {result.context or '(empty)'}" if result.found else f"{key}: not found"
    ctx.out.document(document, table=rows if rows else None, headers=["sibling", "value"], text=text)
    if not result.found:
        sys.exit(EXIT_NO)


@cli.command()
@click.argument("key")
@click.argument("value", required=False)
@click.option("--file", "path", type=click.File("rb"), help="read the value from a file ('-' for stdin)")
@click.option("--context", default=None, help="context from a previous get: supersede what it has seen")
@click.option("--w", "w", type=int, help="acknowledgements to wait for (1..N)")
@pass_context
def put(ctx: Context, key: str, value: str | None, path: Any, context: str | None, w: int | None) -> None:
    """Write VALUE (or --file) under KEY."""
    if (value is None) == (path is None):
        ctx.out.fail(EXIT_USAGE, "give exactly one of VALUE or --file")
    data = path.read() if path is not None else value.encode()
    client = ctx.client()
    new_context = _client_call(ctx, lambda: client.put(key, data, context=context, w=w))
    ctx.out.document({"key": key, "context": new_context}, text=f"ok, context: {new_context}")


@cli.command()
@click.argument("key")
@click.option("--context", default=None, help="context from a previous get: delete what it has seen")
@click.option("--w", "w", type=int, help="acknowledgements to wait for (1..N)")
@pass_context
def delete(ctx: Context, key: str, context: str | None, w: int | None) -> None:
    """Delete KEY (a versioned tombstone: concurrent writes survive as siblings)."""
    client = ctx.client()
    new_context = _client_call(ctx, lambda: client.delete(key, context=context, w=w))
    ctx.out.document({"key": key, "context": new_context}, text="ok, deleted")


# -- cluster admin -----------------------------------------------------------------------------


@cli.command()
@pass_context
def status(ctx: Context) -> None:
    """Show the cluster's members as the node sees them (exit 1 when any member is down)."""
    client = ctx.client()
    document = _client_call(ctx, client.status)
    rows = [[m["id"], m["status"], m["http"], m["peer"], m.get("partitions", "-"),
             "-" if m.get("heard_ago") is None else f"{m['heard_ago']:.1f}s"] for m in document["members"]]
    text = (f"node {document['node']}  N={document['n']} R={document['r']} W={document['w']}  "
            f"mode={document['mode']}  partitions={document.get('partitions', '?')}")
    ctx.out.document(document, table=rows, headers=["member", "status", "http", "peer", "partitions", "heard"],
                     text=text)
    if any(m["status"] == "down" for m in document["members"]):
        sys.exit(EXIT_NO)


@cli.command()
@pass_context
def ring(ctx: Context) -> None:
    """Show partition ownership and each partition's preference list."""
    client = ctx.client()
    document = _client_call(ctx, client.ring)
    rows = [[p, owner, ",".join(document["preference_lists"][p])] for p, owner in enumerate(document["ownership"])]
    counts: dict[str, int] = {}
    for owner in document["ownership"]:
        counts[owner] = counts.get(owner, 0) + 1
    summary = ", ".join(f"{node}: {count}" for node, count in sorted(counts.items()))
    ctx.out.document(document, table=rows, headers=["partition", "owner", "preference list"],
                     text=f"{document['partitions']} partitions, N={document['n']}; owned: {summary}")


@cli.command()
@pass_context
def stats(ctx: Context) -> None:
    """Requests per operation and status code, latency bounds from the node's histograms, and its
    counters (storage batches, read repairs, handoffs, corrupt records)."""
    from dynactl.stats import summarise

    client = ctx.client()
    document = summarise(_client_call(ctx, client.metrics))
    rows = [[op, o["count"], " ".join(f"{c}:{n}" for c, n in o["by_code"].items()),
             o["mean_ms"], o["p50_le_ms"], o["p99_le_ms"]] for op, o in document["operations"].items()]
    counters = ", ".join(f"{name}={value:g}" for name, value in sorted(document["counters"].items()))
    ctx.out.document(document, table=rows,
                     headers=["op", "requests", "by status", "mean ms", "p50 <= ms", "p99 <= ms"],
                     text=counters)


# -- local clusters ----------------------------------------------------------------------------


@cli.group()
def local() -> None:
    """Clusters of dynamod processes on this machine (127.0.0.1)."""


def _dir_option(command: Any) -> Any:
    return click.option("--dir", "directory", default=DEFAULT_DIR, show_default=True,
                        help="directory holding cluster.json and the nodes' files")(command)


def _local_errors(ctx: Context, action: Any) -> Any:
    try:
        return action()
    except LocalClusterError as exc:
        ctx.out.fail(EXIT_USAGE, str(exc))


@local.command("up")
@click.option("--nodes", "count", type=int, default=3, show_default=True, help="how many nodes")
@_dir_option
@click.option("--n", "n", type=int, default=3, show_default=True)
@click.option("--r", "r", type=int, default=2, show_default=True)
@click.option("--w", "w", type=int, default=2, show_default=True)
@click.option("--partitions", type=int, default=64, show_default=True, help="partitions of the ring (Q)")
@click.option("--mode", type=click.Choice(["vclock", "lww"]), default="vclock", show_default=True)
@click.option("--base-port", type=int, default=8000, show_default=True,
              help="node i listens on BASE+i (HTTP) and BASE-1000+i (peer)")
@click.option("--sync/--no-sync", default=True, show_default=True, help="fsync every commit")
@click.option("--engine", type=click.Choice(["bdb", "memory"]), default="bdb", show_default=True)
@pass_context
def local_up(ctx: Context, count: int, directory: str, n: int, r: int, w: int, partitions: int, mode: str,
             base_port: int, sync: bool, engine: str) -> None:
    """Start a local cluster and wait until every node answers."""
    if not (1 <= r <= n and 1 <= w <= n):
        ctx.out.fail(EXIT_USAGE, f"--r and --w must be between 1 and --n ({n})")
    cluster = LocalCluster(directory)
    settings = {"n": n, "r": r, "w": w, "partitions": partitions, "mode": mode, "sync": sync, "engine": engine}
    _local_errors(ctx, lambda: cluster.create(count, base_port=base_port, settings=settings))
    for node in cluster.nodes:
        cluster.start(node)
    try:
        cluster.wait_until_serving(cluster.nodes)
    except LocalClusterError as exc:
        for node in cluster.nodes:
            cluster.stop(node)
        ctx.out.fail(EXIT_INTERNAL, f"{exc}; the cluster was stopped")
    ctx.out.document(cluster.contract_document(),
                     text="\n".join(f"{node.id} http://{node.http}" for node in cluster.nodes))


@local.command("down")
@_dir_option
@click.option("--wipe", is_flag=True, help="also delete the nodes' data, logs and cluster.json")
@pass_context
def local_down(ctx: Context, directory: str, wipe: bool) -> None:
    """Stop every node (SIGTERM, then SIGKILL after a grace period)."""
    cluster = _local_errors(ctx, lambda: LocalCluster(directory).load())
    results = {node.id: cluster.stop(node) for node in cluster.nodes}
    if wipe:
        shutil.rmtree(cluster.directory)
    ctx.out.document({"nodes": results, "wiped": wipe},
                     table=sorted(results.items()), headers=["node", "result"])


def _one_node_command(name: str, doc: str, act: Any) -> None:
    @local.command(name, help=doc)
    @click.argument("node_id")
    @_dir_option
    @pass_context
    def command(ctx: Context, node_id: str, directory: str) -> None:
        cluster = _local_errors(ctx, lambda: LocalCluster(directory).load())
        node = _local_errors(ctx, lambda: cluster.node(node_id))
        result = _local_errors(ctx, lambda: act(ctx, cluster, node))
        ctx.out.document({"node": node_id, "result": result, "pid": node.pid}, text=f"{node_id}: {result}")


def _start(ctx: Context, cluster: LocalCluster, node: Any) -> str:
    if cluster.running(node):
        return "already running"
    cluster.start(node)
    cluster.wait_until_serving([node])
    return f"started (pid {node.pid})"


_one_node_command("start", "Start one node of the local cluster and wait until it answers.", _start)
_one_node_command("stop", "Stop one node gracefully (SIGTERM, SIGKILL after a grace period).",
                  lambda ctx, cluster, node: cluster.stop(node))
_one_node_command("kill", "Kill one node with SIGKILL (a crash: no clean shutdown).",
                  lambda ctx, cluster, node: cluster.kill(node))


@local.command("status")
@_dir_option
@pass_context
def local_status(ctx: Context, directory: str) -> None:
    """Show the local cluster's nodes and whether each process runs and answers."""
    from dynactl.local import answers_status

    cluster = _local_errors(ctx, lambda: LocalCluster(directory).load())
    rows = []
    for node in cluster.nodes:
        running = cluster.running(node)
        rows.append({"id": node.id, "http": node.http, "peer": node.peer, "pid": node.pid if running else None,
                     "running": running, "serving": running and answers_status(node.http)})
    ctx.out.document({"nodes": rows, **cluster.settings},
                     table=[[r["id"], r["http"], r["peer"], r["pid"] or "-", r["serving"]] for r in rows],
                     headers=["node", "http", "peer", "pid", "serving"])


def main() -> None:
    """Console-script entry point: usage errors exit 2, crashes exit 3 with one line."""
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.UsageError as exc:
        exc.show()
        sys.exit(EXIT_USAGE)
    except click.exceptions.Abort:
        sys.exit(EXIT_INTERNAL)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except Exception as exc:  # noqa: BLE001 - one clear line, not a traceback
        click.echo(f"dynactl: internal error: {type(exc).__name__}: {exc}", err=True)
        sys.exit(EXIT_INTERNAL)
