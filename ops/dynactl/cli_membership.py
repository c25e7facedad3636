"""Dead-node operations of ``dynactl`` (issue 13): ``replace DEAD NEW``, ``remove DEAD``, their
``local`` forms, and the staged plan every membership change shows first (``--dry-run``), like
``riak-admin cluster plan``.

Each command asks for a dry run first and prints the plan: the partitions whose owner changes,
the partitions whose replica set changes, and the warnings. When the plan puts acknowledged
writes at risk (``at_risk``: partitions where the dead node was a replica while another replica
is down too) the command refuses without ``--force`` (exit 1); a plan without that risk goes
ahead. ``--wait`` then polls until the change is complete, with a progress line on stderr.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from dynactl.context import Context, pass_context
from dynactl.local import DEFAULT_DIR, LocalCluster, LocalClusterError, fetch_status
from dynactl.output import EXIT_INTERNAL, EXIT_NO, EXIT_USAGE
from dynamod import polling
from dynamod.client import ClientError, Credentials, DynamoClient, NodeUnavailable, QuorumError

#: Seconds between polls of --wait.
POLL_SECONDS = 0.5


def client_call(ctx: Context, action: Callable[[], Any]) -> Any:
    """Run one client call, mapping failures to the CONTRACT's exit codes."""
    try:
        return action()
    except QuorumError as exc:
        ctx.out.fail(EXIT_NO, f"{exc.body.get('error')} (needed {exc.needed}, acks {exc.acks})",
                     needed=exc.needed, acks=exc.acks)
    except ClientError as exc:
        # 409: the node refused a membership change; 502: it could not reach the seed.
        code = EXIT_NO if exc.status in (409, 502) else EXIT_USAGE if 400 <= exc.status < 500 else EXIT_INTERNAL
        ctx.out.fail(code, f"{exc.body.get('error', exc)} (HTTP {exc.status})", status=exc.status)
    except NodeUnavailable as exc:
        ctx.out.fail(EXIT_INTERNAL, f"node unreachable: {exc}")


def seed_peer_address(seed: str, credentials: Credentials | None) -> str:
    """A member's peer address from its HTTP or peer address (HTTP is what operators know)."""
    status = fetch_status(seed, credentials=credentials)
    if status is None:
        return seed
    for member in status.get("members", []):
        if member["id"] == status.get("node"):
            return member["peer"]
    return seed


def plan_text(plan: dict[str, Any]) -> str:
    """The staged plan for people: one line per ownership move, a summary, then the warnings."""
    what = {"join": f"{plan['node']} joins", "leave": f"{plan['node']} leaves",
            "remove": f"{plan['node']} is removed (it is not read)",
            "replace": f"{plan['node']} replaces {plan.get('replaces')} (it is not read)"}[plan["change"]]
    lines = [f"plan on ring version {plan['ring_version']}: {what}"]
    lines += [f"  partition {m['partition']:>4}: {m['from']} -> {m['to']}" for m in plan["moves"]]
    changes = plan.get("replica_changes", [])
    gains = sum(len(c["gains"]) for c in changes)
    lines.append(f"  {len(plan['moves'])} partitions change owner; {len(changes)} change replicas "
                 f"({gains} new replica copies to fill)")
    lines += [f"WARNING: {warning}" for warning in plan.get("warnings", [])]
    if plan.get("at_risk"):
        lines.append(f"AT RISK: {len(plan['at_risk'])} partitions (see above); --force to go ahead anyway")
    return "\n".join(lines)


def refuse_at_risk(ctx: Context, plan: dict[str, Any], force: bool) -> None:
    """Exit 1 (printing the plan) when the plan puts acknowledged writes at risk and not --force."""
    if plan.get("at_risk") and not force:
        click.echo(plan_text(plan), err=True)
        ctx.out.fail(EXIT_NO, f"refused: {len(plan['at_risk'])} partitions lose a replica whose partners are down "
                              "too; acknowledged writes may be lost (rerun with --force to go ahead)", plan=plan)


def wait_until(done: Callable[[], tuple[bool, str]], timeout: float, what: str, ctx: Context) -> None:
    """Poll ``done`` (answering whether it is done and a progress line) until it holds or the
    timeout passes (exit 1); the progress line goes to stderr."""
    def poll_once() -> bool:
        try:
            finished, line = done()
        except (NodeUnavailable, ClientError) as exc:
            finished, line = False, f"waiting: {exc}"
        click.echo(f"\r{line} ...  ", nl=False, err=True)
        return finished

    finished = polling.wait_until(poll_once, timeout, interval=POLL_SECONDS)
    click.echo("", err=True)
    if not finished:
        ctx.out.fail(EXIT_NO, f"{what} not complete after {timeout:.0f}s (see: dynactl transfers)")


def replacement_done(new: DynamoClient) -> tuple[bool, str]:
    """Whether the replacement is a member and filled, with a progress line."""
    document = new.transfers()
    fill = document["fill"]
    status = next((m["status"] for m in document["members"] if m["id"] == document["node"]), "?")
    line = f"{document['node']} {status}: {fill['filled']}/{fill['gained']} partitions filled"
    return status == "up" and fill["complete"] and document["settled"], line


def members_done(asked: DynamoClient) -> tuple[bool, str]:
    """Whether every member the asked node sees up reports a settled ring and a complete fill."""
    status = asked.status()
    pending, unfilled, total = 0, 0, 0
    settled = True
    for member in status["members"]:
        if member["status"] == "down":
            continue
        # The members are of the asked node's cluster: its credentials reach them all.
        document = DynamoClient(member["http"], timeout=5, credentials=asked.credentials).transfers()
        settled = settled and document["settled"]
        pending += document["outbound"]["pending_keys"]
        total += document["fill"]["gained"]
        unfilled += document["fill"]["gained"] - document["fill"]["filled"]
    line = f"{pending} keys to transfer, {total - unfilled}/{total} gained partitions filled"
    return settled and pending == 0 and unfilled == 0, line


def do_replace(ctx: Context, new: DynamoClient, seed: str, dead: str, dry_run: bool, force: bool, wait: bool,
               timeout: float) -> dict[str, Any]:
    """Plan, check and run a replacement of ``dead`` by the node behind ``new`` (``seed``, a member of
    the cluster it joins, is reached with the same credentials)."""
    seed_peer = seed_peer_address(seed, new.credentials)
    plan = client_call(ctx, lambda: new.join(seed_peer, replace=dead, dry_run=True))["plan"]
    if dry_run:
        return {"dry_run": True, "plan": plan}
    refuse_at_risk(ctx, plan, force)
    answer = client_call(ctx, lambda: new.join(seed_peer, replace=dead))
    click.echo(plan_text(answer.get("plan", plan)), err=True)
    if wait:
        wait_until(lambda: replacement_done(new), timeout, f"the replacement of {dead}", ctx)
    return answer


def do_remove(ctx: Context, asked: DynamoClient, dead: str, dry_run: bool, force: bool, wait: bool,
              timeout: float) -> dict[str, Any]:
    """Plan, check and run a removal of ``dead`` through the member behind ``asked``."""
    plan = client_call(ctx, lambda: asked.remove_node(dead, dry_run=True))["plan"]
    if dry_run:
        return {"dry_run": True, "plan": plan}
    refuse_at_risk(ctx, plan, force)
    answer = client_call(ctx, lambda: asked.remove_node(dead))
    click.echo(plan_text(answer.get("plan", plan)), err=True)
    if wait:
        wait_until(lambda: members_done(asked), timeout, f"the removal of {dead}", ctx)
    return answer


def show(ctx: Context, document: dict[str, Any]) -> None:
    """Print the answer: the plan for a dry run, a one-line result otherwise."""
    if document.get("dry_run"):
        ctx.out.document(document, text=plan_text(document["plan"]))
        return
    if "replaces" in document:
        text = (f"{document['node']} replaced {document['replaces']}: it owns {document['partitions_claimed']} "
                "partitions, filled by anti-entropy (dynactl transfers)")
    else:
        text = f"{document['removed']} removed; members: {', '.join(document['members'])}"
    ctx.out.document(document, text=text)


def _change_options(command: Any) -> Any:
    for option in (
        click.option("--timeout", type=float, default=600, show_default=True, help="seconds --wait waits at most"),
        click.option("--wait/--no-wait", default=False, show_default=True,
                     help="wait until the change is complete (filled, transfers done), showing progress"),
        click.option("--force", is_flag=True, help="go ahead although the plan puts acknowledged writes at risk"),
        click.option("--dry-run", is_flag=True, help="print the staged plan only; change nothing"),
    ):
        command = option(command)
    return command


@click.command()
@click.argument("dead")
@click.argument("new", metavar="NEW_HOST:PORT")
@_change_options
@pass_context
def replace(ctx: Context, dead: str, new: str, dry_run: bool, force: bool, wait: bool, timeout: float) -> None:
    """Replace the dead member DEAD by the fresh node at NEW_HOST:PORT (HTTP; started alone, empty
    data dir): it takes over exactly DEAD's partitions and is filled from the surviving replicas.
    --node is any live member (the seed)."""
    show(ctx, do_replace(ctx, ctx.client(new), ctx.node_address(), dead, dry_run, force, wait, timeout))


@click.command()
@click.argument("dead")
@_change_options
@pass_context
def remove(ctx: Context, dead: str, dry_run: bool, force: bool, wait: bool, timeout: float) -> None:
    """Remove the dead member DEAD: its partitions go to the others, filled from the surviving
    replicas (refused while the node asked, --node, sees DEAD up: use leave on a live node)."""
    show(ctx, do_remove(ctx, ctx.client(), dead, dry_run, force, wait, timeout))


COMMANDS = (replace, remove)


def _local_cluster(ctx: Context, directory: str) -> LocalCluster:
    try:
        return LocalCluster(directory).load()
    except LocalClusterError as exc:
        ctx.out.fail(EXIT_USAGE, str(exc))


def _running_member(ctx: Context, cluster: LocalCluster, dead: str) -> Any:
    for node in cluster.nodes:
        if node.id != dead and cluster.running(node):
            status = fetch_status(node.http, credentials=ctx.credentials_for(node.http, cluster))
            if status and any(m["id"] == node.id for m in status.get("members", [])) and len(status["members"]) > 1:
                return node
    ctx.out.fail(EXIT_USAGE, "no running member of the local cluster to ask")


@click.command("replace")
@click.argument("dead")
@click.option("--dir", "directory", default=DEFAULT_DIR, show_default=True,
              help="directory holding cluster.json and the nodes' files")
@_change_options
@pass_context
def local_replace(ctx: Context, dead: str, directory: str, dry_run: bool, force: bool, wait: bool,
                  timeout: float) -> None:
    """Start a fresh node and replace the dead local node DEAD with it (a dry run starts it too,
    asks for the plan, then stops and forgets it)."""
    cluster = _local_cluster(ctx, directory)
    try:
        cluster.node(dead)
    except LocalClusterError as exc:
        ctx.out.fail(EXIT_USAGE, str(exc))
    seed = _running_member(ctx, cluster, dead)
    try:
        node = cluster.add_node()
    except LocalClusterError as exc:
        ctx.out.fail(EXIT_USAGE, str(exc))
    try:
        cluster.start(node)
        cluster.wait_until_serving([node])
    except LocalClusterError as exc:
        cluster.stop(node)
        ctx.out.fail(EXIT_INTERNAL, f"{exc}; {node.id} was stopped")
    new = ctx.client(node.http, cluster=cluster)
    try:
        document = do_replace(ctx, new, seed.http, dead, dry_run, force, wait, timeout)
    except SystemExit:
        status = fetch_status(node.http, credentials=new.credentials)
        if status is None or [m["id"] for m in status.get("members", [])] == [node.id]:
            cluster.stop(node)  # refused: the fresh node never joined
            cluster.discard(node)
        raise
    if dry_run:
        cluster.stop(node)
        cluster.discard(node)
    show(ctx, {**document, "http": node.http, "peer": node.peer})


@click.command("remove")
@click.argument("dead")
@click.option("--dir", "directory", default=DEFAULT_DIR, show_default=True,
              help="directory holding cluster.json and the nodes' files")
@_change_options
@pass_context
def local_remove(ctx: Context, dead: str, directory: str, dry_run: bool, force: bool, wait: bool,
                 timeout: float) -> None:
    """Remove the dead local node DEAD through a running member."""
    cluster = _local_cluster(ctx, directory)
    seed = _running_member(ctx, cluster, dead)
    show(ctx, do_remove(ctx, ctx.client(seed.http, cluster=cluster), dead, dry_run, force, wait, timeout))


LOCAL_COMMANDS = (local_replace, local_remove)
