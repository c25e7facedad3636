"""``dynactl``: the operator's command line (CONTRACT.md).

Key-value commands talk to any node (``--node``, ``$DYNACTL_NODE``, else the first node of
``.dynamo/local/cluster.json``); ``local`` manages clusters of processes on this machine. A secured
cluster is reached with ``--ca/--cert/--key/--token`` (or ``$DYNACTL_CA`` ...), a secured local one
with the credentials its cluster.json names (``dynactl.context``).
Exit codes: 0 success, 1 the answer is "no" (not found, quorum not met), 2 usage or input error,
3 internal error (node unreachable, unexpected failure).
"""

from __future__ import annotations

import base64
import shutil
import sys
from typing import Any

import click

from dynactl import cli_certs, cli_deploy, cli_host, cli_membership, cli_testbed
from dynactl.context import Context, pass_context
from dynactl.local import DEFAULT_DIR, LocalCluster, LocalClusterError
from dynactl.output import EXIT_INTERNAL, EXIT_NO, EXIT_USAGE, show_value
from dynamod.client import ClientError, NodeUnavailable
from dynamod.polling import wait_until


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("--node", metavar="HOST:PORT", help="node to talk to [default: $DYNACTL_NODE or the local cluster]")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True,
              help="table for people, json for scripts (one document on stdout)")
@click.option("--ca", metavar="FILE", help="secured cluster: the cluster CA's certificate, to verify the nodes "
                                           "[default: $DYNACTL_CA, else a secured local cluster's]")
@click.option("--cert", metavar="FILE", help="client certificate (dynactl certs client) [default: $DYNACTL_CERT]")
@click.option("--key", metavar="FILE", help="the client certificate's key [default: $DYNACTL_KEY]")
@click.option("--token", metavar="TOKEN", help="bearer token (dynactl certs token); prefer $DYNACTL_TOKEN, which "
                                               "other users cannot read in the process list")
@click.pass_context
def cli(ctx: click.Context, node: str | None, fmt: str, ca: str | None, cert: str | None, key: str | None,
        token: str | None) -> None:
    """Operate a dynamod cluster."""
    ctx.obj = Context(node, fmt, {"ca": ca, "cert": cert, "key": key, "token": token})


_client_call = cli_membership.client_call
_seed_peer_address = cli_membership.seed_peer_address


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
    new_context = _client_call(ctx, lambda: client.delete(key, context=context, w=w).context)
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
    stages = [f"{op} stages, p50/p99 ms: " + ", ".join(f"{stage} {s['p50_ms']:g}/{s['p99_ms']:g}"
                                                     for stage, s in by_stage.items())
              for op, by_stage in document["stages"].items()]
    ctx.out.document(document, table=rows,
                     headers=["op", "requests", "by status", "mean ms", "p50 <= ms", "p99 <= ms"],
                     text="\n".join([counters, *stages]))


def _transfer_rows(document: dict[str, Any]) -> list[list[Any]]:
    rows = [[m["id"], m["status"], "not reported" if m["pending_keys"] is None else m["pending_keys"]]
            for m in document["members"]]
    return rows


def _transfer_text(document: dict[str, Any]) -> str:
    outbound = document["outbound"]["partitions"]
    lines = [f"ring version {document['ring_version']}: "
             + ("settled, no transfers" if document["settled"] else "transfers in progress")]
    for p in outbound:
        lines.append(f"  {document['node']} -> {','.join(p['to'])}: partition {p['partition']}, "
                     f"{p['keys']} keys ({p['state']})")
    return "\n".join(lines)


@cli.command()
@click.option("--watch", is_flag=True, help="refresh every second until no transfer is left")
@click.option("--timeout", type=float, default=600, show_default=True, help="seconds --watch waits at most")
@pass_context
def transfers(ctx: Context, watch: bool, timeout: float) -> None:
    """Show partition transfers: keys each member still holds for others (as gossiped), and the
    partitions this node is sending (exit 1 while transfers remain)."""
    client = ctx.client()

    def fetch_showing_progress() -> dict[str, Any]:
        document = _client_call(ctx, client.transfers)
        if not document["settled"]:
            pending = sum(m["pending_keys"] or 0 for m in document["members"])
            click.echo(f"\r{pending} keys to transfer on ring version {document['ring_version']} ...  ",
                       nl=False, err=True)
        return document

    if watch:
        document = wait_until(fetch_showing_progress, timeout, interval=1, done=lambda answer: answer["settled"])
        click.echo("", err=True)
    else:
        document = _client_call(ctx, client.transfers)
    ctx.out.document(document, table=_transfer_rows(document), headers=["member", "status", "keys to transfer"],
                     text=_transfer_text(document))
    if not document["settled"]:
        sys.exit(EXIT_NO)


@cli.command()
@click.argument("seed", metavar="SEED_HOST:PORT")
@click.option("--dry-run", is_flag=True, help="print the staged plan only; change nothing")
@pass_context
def join(ctx: Context, seed: str, dry_run: bool) -> None:
    """Join the node (--node) to the cluster of SEED, any member's HTTP or peer address. The node
    claims its share of partitions; their data follows in the background (see: dynactl transfers)."""
    client = ctx.client()
    seed_peer = _seed_peer_address(seed, ctx.credentials_for(seed))
    document = _client_call(ctx, lambda: client.join(seed_peer, dry_run=dry_run))
    if dry_run:
        ctx.out.document(document, text=cli_membership.plan_text(document["plan"]))
        return
    ctx.out.document(document, text=f"{document['node']} joined ({len(document['members'])} members); it "
                                    f"claims {document['partitions_claimed']} partitions, transfers follow "
                                    "(dynactl transfers --watch)")


@cli.command()
@click.option("--wait/--no-wait", default=True, show_default=True,
              help="wait until the node has handed everything off and stopped")
@click.option("--timeout", type=float, default=600, show_default=True, help="seconds to wait at most")
@click.option("--dry-run", is_flag=True, help="print the staged plan only; change nothing")
@pass_context
def leave(ctx: Context, wait: bool, timeout: float, dry_run: bool) -> None:
    """Have the node (--node) leave: its partitions go to the others, it hands off all its data,
    then it stops serving."""
    client = ctx.client()
    if dry_run:
        document = _client_call(ctx, lambda: client.leave(dry_run=True))
        ctx.out.document(document, text=cli_membership.plan_text(document["plan"]))
        return
    document = _client_call(ctx, client.leave)

    def stopped() -> bool:
        try:
            progress = client.transfers()
        except NodeUnavailable:  # it has handed everything off and stopped serving
            return True
        except ClientError:
            return False
        pending = progress["outbound"]["pending_keys"]
        click.echo(f"\r{ctx.node_address()}: {pending} keys left to hand off ...  ", nl=False, err=True)
        return False

    if wait:
        left = wait_until(stopped, timeout, interval=0.5)
        click.echo("", err=True)
        if not left:
            ctx.out.fail(EXIT_NO, f"the node is still leaving after {timeout:.0f}s (see: dynactl transfers)")
        document = {**document, "status": "left", "pending_keys": 0}
    ctx.out.document(document, text=f"{document['node']}: {document['status']}"
                                    + ("" if wait else f", {document['pending_keys']} keys to hand off"))


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
@click.option("--tls", is_flag=True, help="secured: make a CA and certificates in DIR/certs; mutual TLS between the "
                                          "nodes, HTTPS with authentication (dynactl uses DIR/certs/clients/dynactl)")
@pass_context
def local_up(ctx: Context, count: int, directory: str, n: int, r: int, w: int, partitions: int, mode: str,
             base_port: int, sync: bool, engine: str, tls: bool) -> None:
    """Start a local cluster and wait until every node answers."""
    if not (1 <= r <= n and 1 <= w <= n):
        ctx.out.fail(EXIT_USAGE, f"--r and --w must be between 1 and --n ({n})")
    cluster = LocalCluster(directory)
    settings = {"n": n, "r": r, "w": w, "partitions": partitions, "mode": mode, "sync": sync, "engine": engine}
    _local_errors(ctx, lambda: cluster.create(count, base_port=base_port, settings=settings, tls=tls))
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


@local.command("add")
@_dir_option
@pass_context
def local_add(ctx: Context, directory: str) -> None:
    """Start one more node and join it to the running local cluster (appended to cluster.json)."""
    cluster = _local_errors(ctx, lambda: LocalCluster(directory).load())
    node = _local_errors(ctx, cluster.add_node)
    cluster.start(node)
    try:
        cluster.wait_until_serving([node])
        seed = next(n for n in cluster.nodes if n is not node and cluster.running(n))
    except (LocalClusterError, StopIteration) as exc:
        cluster.stop(node)
        ctx.out.fail(EXIT_INTERNAL, f"{exc or 'no running node to join'}; {node.id} was stopped")
    joined = _client_call(ctx, lambda: ctx.client(node.http, cluster=cluster).join(seed.peer))
    _local_errors(ctx, lambda: cluster.wait_until_serving(cluster.nodes))
    ctx.out.document({**joined, "http": node.http, "peer": node.peer},
                     text=f"{node.id} http://{node.http} joined through {seed.id}; it claims "
                          f"{joined['partitions_claimed']} partitions (dynactl transfers --watch)")


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
        serving = running and answers_status(node.http, credentials=ctx.credentials_for(node.http, cluster))
        rows.append({"id": node.id, "http": node.http, "peer": node.peer, "pid": node.pid if running else None,
                     "running": running, "serving": serving})
    ctx.out.document({"nodes": rows, **cluster.settings},
                     table=[[r["id"], r["http"], r["peer"], r["pid"] or "-", r["serving"]] for r in rows],
                     headers=["node", "http", "peer", "pid", "serving"])


for _command in (*cli_host.COMMANDS, *cli_testbed.COMMANDS, *cli_deploy.COMMANDS, *cli_membership.COMMANDS,
                 *cli_certs.COMMANDS):
    cli.add_command(_command)
for _command in cli_membership.LOCAL_COMMANDS:
    local.add_command(_command)


def main() -> None:
    """Console-script entry point: usage errors exit 2, crashes exit 3 with one line."""
    try:
        # Without standalone mode, click returns (rather than raises) a command's Exit code.
        code = cli.main(standalone_mode=False)
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
    sys.exit(code if isinstance(code, int) else 0)
