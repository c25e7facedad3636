"""``dynactl certs``: make the cluster CA, issue node and client certificates and HTTP tokens, and
show what a certificate says (issue 15). Everything happens in a local directory: keys are made
where the command runs and leave it only when an operator copies them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from dynactl.certs import (
    CA_DAYS,
    DEFAULT_CLUSTER,
    LEAF_DAYS,
    TOKENS,
    CertsError,
    CertsExist,
    Issued,
    add_token,
    describe,
    describe_certificate,
    init_ca,
    issue_client,
    issue_node,
    issued_by,
)
from dynactl.context import Context, pass_context
from dynactl.output import EXIT_NO, EXIT_USAGE
from dynamod.security.identity import ROLE_NAMES, Role

_dir_option = click.option("--dir", "directory", required=True, type=click.Path(file_okay=False),
                           help="the certs directory (ca.pem, ca.key, nodes/, clients/, tokens)")
_force_option = click.option("--force", is_flag=True, help="replace existing files")
_role_option = click.option("--role", required=True, type=click.Choice(ROLE_NAMES),
                            help="reader: GET; writer: and PUT, DELETE; admin: and /admin, /metrics")


def _days_option(default: int):
    return click.option("--days", type=click.IntRange(min=1), default=default, show_default=True,
                        help="days the certificate is valid")


def _certs_call(ctx: Context, action: Callable[[], Any]) -> Any:
    """Run ``action``; a refusal to overwrite exits 1, any other CertsError 2."""
    try:
        return action()
    except CertsExist as exc:
        ctx.out.fail(EXIT_NO, str(exc))
    except CertsError as exc:
        ctx.out.fail(EXIT_USAGE, str(exc))


def _issued_document(issued: Issued) -> dict[str, Any]:
    return {**describe_certificate(issued.certificate), "certificate": str(issued.certificate_path),
            "key": str(issued.key_path)}


@click.group("certs")
def certs() -> None:
    """The cluster CA, node and client certificates, and HTTP bearer tokens."""


@certs.command("init")
@_dir_option
@click.option("--cluster", "cluster_name", default=DEFAULT_CLUSTER, show_default=True,
              help="cluster name, the O= of every certificate")
@_days_option(CA_DAYS)
@_force_option
@pass_context
def certs_init(ctx: Context, directory: str, cluster_name: str, days: int, force: bool) -> None:
    """Make the cluster CA in DIR. Replacing it (--force) invalidates every certificate it issued."""
    issued = _certs_call(ctx, lambda: init_ca(directory, cluster_name, days=days, force=force))
    ctx.out.document(_issued_document(issued),
                     text=f"CA of cluster {cluster_name}: {issued.certificate_path} (key {issued.key_path}: "
                          f"keep it private)")


@certs.command("issue")
@click.argument("node_id")
@_dir_option
@click.option("--address", "addresses", multiple=True, metavar="HOST[:PORT]",
              help="an address peers and clients dial this node at (repeatable): its host, a DNS name or IP "
                   "address, goes in the certificate")
@_days_option(LEAF_DAYS)
@_force_option
@pass_context
def certs_issue(ctx: Context, node_id: str, directory: str, addresses: tuple[str, ...], days: int,
                force: bool) -> None:
    """Issue the certificate of node NODE_ID (nodes/NODE_ID.pem and .key in DIR)."""
    issued = _certs_call(ctx, lambda: issue_node(directory, node_id, list(addresses), days=days, force=force))
    document = _issued_document(issued)
    hosts = ", ".join(document["dns"] + document["ips"]) or "no host names"
    ctx.out.document(document, text=f"node {node_id}: {issued.certificate_path} ({hosts}), key {issued.key_path}")


@certs.command("client")
@click.argument("name")
@_role_option
@_dir_option
@_days_option(LEAF_DAYS)
@_force_option
@pass_context
def certs_client(ctx: Context, name: str, role: str, directory: str, days: int, force: bool) -> None:
    """Issue a certificate for HTTP client NAME with a role (clients/NAME.pem and .key in DIR)."""
    issued = _certs_call(ctx, lambda: issue_client(directory, name, Role.named(role), days=days, force=force))
    ctx.out.document(_issued_document(issued),
                     text=f"client {name} ({role}): {issued.certificate_path}, key {issued.key_path}")


@certs.command("token")
@click.argument("name")
@_role_option
@_dir_option
@pass_context
def certs_token(ctx: Context, name: str, role: str, directory: str) -> None:
    """Make a bearer token for NAME with a role, add its digest to DIR/tokens and print it once."""
    token = _certs_call(ctx, lambda: add_token(directory, name, Role.named(role)))
    # Alone on stdout, so that TOKEN=$(dynactl certs token ...) captures it.
    ctx.out.document({"name": name, "role": role, "token": token, "file": str(Path(directory) / TOKENS)},
                     text=token)
    click.echo(f"dynactl: token for {name} ({role}) printed once: it is not stored, only its digest", err=True)


@certs.command("show")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--ca", "ca_file", type=click.Path(dir_okay=False), default=None,
              help="also check that FILE was issued by this CA certificate")
@pass_context
def certs_show(ctx: Context, file: str, ca_file: str | None) -> None:
    """Show whom the certificate in FILE names, its host names, issuer and expiry."""
    document = _certs_call(ctx, lambda: describe(file))
    if ca_file is not None:
        document["issued_by_ca"] = _certs_call(ctx, lambda: issued_by(ca_file, file))
    rows = [[field, _cell(document[field])] for field in
            ("principal", "subject", "issuer", "not_before", "not_after", "uris", "dns", "ips", "serial", "sha256",
             "issued_by_ca") if field in document]
    ctx.out.document(document, table=rows, headers=["field", "value"])


def _cell(value: Any) -> str:
    if value is None:
        return "(no one)"
    if isinstance(value, list):
        return ", ".join(value) or "-"
    return str(value)


COMMANDS = (certs,)
