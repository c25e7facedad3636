"""``dynacheck``: the Jepsen-style checker (CONTRACT.md). Not built yet: every command says so."""

from __future__ import annotations

import sys

import click

EXIT_UNKNOWN = 2


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Check that a dynamod cluster keeps its promise (not built yet: see the README)."""


@cli.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
def run() -> None:
    """Run a test against a cluster (not built yet)."""
    click.echo("dynacheck: run is not built yet; nothing was checked", err=True)
    sys.exit(EXIT_UNKNOWN)


def main() -> None:
    """Console-script entry point."""
    cli()
