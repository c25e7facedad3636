"""What every dynactl subcommand gets: the output format and how to reach a node."""

from __future__ import annotations

import os

import click

from dynactl.local import DEFAULT_DIR, LocalCluster, LocalClusterError
from dynactl.output import EXIT_USAGE, Output
from dynamod.client import DynamoClient


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
