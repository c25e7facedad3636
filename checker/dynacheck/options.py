"""Command-line options ``dynacheck run`` and ``dynacheck sim`` share: the workload and the
quorums, declared once (each command gives its own defaults for the load)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from dynacheck.workloads import WORKLOADS


def workload_options(concurrency: int, rate: float) -> Callable[[Any], Any]:
    """``--workload --concurrency --rate --keys --mode --n --r --w``, with these load defaults."""
    options = [
        click.option("--workload", type=click.Choice(WORKLOADS), default="cart", show_default=True),
        click.option("--concurrency", type=click.IntRange(1, 200), default=concurrency, show_default=True,
                     help="client threads"),
        click.option("--rate", type=click.FloatRange(0.1, 100000), default=rate, show_default=True,
                     help="ops/s, all clients"),
        click.option("--keys", type=click.IntRange(1, 10000), default=5, show_default=True, help="key space size"),
        click.option("--mode", type=click.Choice(["vclock", "lww"]), default="vclock", show_default=True),
        click.option("--n", "replicas", type=click.IntRange(1, 9), default=3, show_default=True),
        click.option("--r", "read_quorum", type=click.IntRange(1, 9), default=2, show_default=True),
        click.option("--w", "write_quorum", type=click.IntRange(1, 9), default=2, show_default=True),
    ]

    def apply(command: Any) -> Any:
        for option in reversed(options):
            command = option(command)
        return command

    return apply
