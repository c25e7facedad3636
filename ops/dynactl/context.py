"""What every dynactl subcommand gets: the output format, how to reach a node, and with which
credentials.

Credentials are resolved here and nowhere else: ``--ca``/``--cert``/``--key``/``--token`` (each else
its ``DYNACTL_CA``/``DYNACTL_CERT``/``DYNACTL_KEY``/``DYNACTL_TOKEN`` variable) when any is given;
otherwise, for a node of a secured local cluster (the one a ``local`` command names with ``--dir``,
else the one in ``.dynamo/local``), that cluster's ``cluster.json`` ``"tls"``; otherwise none
(plain HTTP).
"""

from __future__ import annotations

import os

import click

from dynactl.local import DEFAULT_DIR, LocalCluster, LocalClusterError
from dynactl.output import EXIT_USAGE, Output
from dynamod.client import Credentials, CredentialsError, DynamoClient

#: Each credential option and the environment variable that stands in for it.
CREDENTIAL_VARIABLES = {"ca": "DYNACTL_CA", "cert": "DYNACTL_CERT", "key": "DYNACTL_KEY", "token": "DYNACTL_TOKEN"}


class Context:
    """What every subcommand gets: the output format and how to reach a node."""

    def __init__(self, node: str | None, fmt: str, credential_options: dict[str, str | None] | None = None):
        self.node_option = node
        self.out = Output(fmt)
        self.credential_options = credential_options or {}
        self._default_cluster: LocalCluster | None = None
        self._default_cluster_loaded = False

    def default_cluster(self) -> LocalCluster | None:
        """The local cluster in the default directory, or None when there is none (read once)."""
        if not self._default_cluster_loaded:
            self._default_cluster_loaded = True
            try:
                self._default_cluster = LocalCluster(DEFAULT_DIR).load()
            except LocalClusterError:
                self._default_cluster = None
        return self._default_cluster

    def node_address(self) -> str:
        if self.node_option:
            return self.node_option
        if os.environ.get("DYNACTL_NODE"):
            return os.environ["DYNACTL_NODE"]
        cluster = self.default_cluster()
        if cluster is None or not cluster.nodes:
            self.out.fail(EXIT_USAGE, "no node given: use --node HOST:PORT, set DYNACTL_NODE, "
                                      "or start a local cluster (dynactl local up)")
        return cluster.nodes[0].http

    def given_credentials(self) -> Credentials | None:
        """The credentials of the options and environment, or None when neither gives any."""
        fields = {name: self.credential_options.get(name) or os.environ.get(variable) or None
                  for name, variable in CREDENTIAL_VARIABLES.items()}
        if not any(fields.values()):
            return None
        if fields["ca"] is None:
            self.out.fail(EXIT_USAGE, "--cert, --key and --token need --ca (or DYNACTL_CA): the cluster CA that "
                                      "signed the nodes' certificates")
        try:
            return Credentials(**fields)
        except CredentialsError as exc:
            self.out.fail(EXIT_USAGE, str(exc))

    def credentials_for(self, address: str, cluster: LocalCluster | None = None) -> Credentials | None:
        """The credentials to reach the node at ``address`` with (see the module's doc); exits 2 when
        they cannot be used (a missing file, a key that is not the certificate's)."""
        credentials = self.given_credentials()
        if credentials is None:
            local = cluster if cluster is not None else self.default_cluster()
            # Only for its own nodes: a plain cluster elsewhere must not be spoken to in TLS.
            if local is not None and any(address in (node.http, node.peer) for node in local.nodes):
                credentials = local.credentials()
        return self.usable(credentials)

    def usable(self, credentials: Credentials | None) -> Credentials | None:
        """``credentials`` once their files are known to be usable; exits 2 naming the one that is not."""
        if credentials is not None:
            try:
                credentials.ssl_context()
            except CredentialsError as exc:
                self.out.fail(EXIT_USAGE, str(exc))
        return credentials

    def client(self, address: str | None = None, *, cluster: LocalCluster | None = None,
               timeout: float = 10.0) -> DynamoClient:
        """A client of the node at ``address`` (default: the node of ``--node``, ``$DYNACTL_NODE`` or
        the local cluster) with its credentials; exits 2 for an address that is not HOST:PORT."""
        address = address or self.node_address()
        try:
            return DynamoClient(address, timeout=timeout, credentials=self.credentials_for(address, cluster))
        except ValueError as exc:
            self.out.fail(EXIT_USAGE, str(exc))


pass_context = click.make_pass_decorator(Context)
