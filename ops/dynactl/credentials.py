"""The credentials tools reach secured nodes with (``dynamod.client.Credentials``), where hosts
carry them, and secured clusters whose certificates are made on this machine.

* A host carries the credentials of its node's HTTP API in the variable ``dynactl_tls`` (a
  ``Credentials``, or in an inventory a mapping ``{ca, cert, key, token}``): the health checks of
  ``dynactl deploy`` and the checker's set-up use it.
* A nodes file (``nodes.json``) names them in a top-level ``"tls"`` object ``{"ca", "cert", "key",
  "token"}`` (``cert`` and ``key`` together, ``token`` optional; paths relative to the file).
* ``make_authority`` and ``node_tls_settings`` make a CA and certificates in a certs directory
  (``dynactl certs`` layout) for nodes whose files are on this machine: ``dynactl local up --tls``
  and ``dynacheck run --local/--testbed --tls``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import attrs

from dynactl import certs
from dynactl.inventory import Host, InventoryError
from dynamod.client import Credentials, CredentialsError
from dynamod.security.identity import Role

#: The host variable holding the credentials of the node's HTTP API.
HOST_CREDENTIALS_VAR = "dynactl_tls"


def host_credentials(host: Host) -> Credentials | None:
    """The credentials ``host``'s node is reached with (None: plain HTTP); CredentialsError when the
    variable does not describe any."""
    value = host.var(HOST_CREDENTIALS_VAR)
    if value is None or isinstance(value, Credentials):
        return value
    if isinstance(value, str):  # an INI inventory's inline variable: JSON text
        try:
            value = json.loads(value)
        except ValueError:
            raise CredentialsError(f"{host.name}: {HOST_CREDENTIALS_VAR} is not a JSON object") from None
    return Credentials.from_json(value, f"{host.name}: {HOST_CREDENTIALS_VAR}")


def with_credentials(host: Host, credentials: Credentials | None) -> Host:
    """``host`` carrying ``credentials`` (unchanged when None)."""
    if credentials is None:
        return host
    return attrs.evolve(host, vars={**host.vars, HOST_CREDENTIALS_VAR: credentials})


def nodes_file_credentials(path: str | Path) -> Credentials | None:
    """The credentials a nodes file's ``"tls"`` object names, its relative paths resolved against
    the file's directory; None for a file without one or an INI inventory. InventoryError when the
    object is not usable."""
    file = Path(path)
    if file.suffix != ".json":
        return None
    try:
        document = json.loads(file.read_text())
    except (OSError, ValueError) as exc:
        raise InventoryError(f"cannot read {path}: {exc}") from None
    if not isinstance(document, dict) or "tls" not in document:
        return None
    tls = document["tls"]
    if isinstance(tls, dict):
        base = file.parent.resolve()
        tls = {name: str(base / value) if name in ("ca", "cert", "key") and isinstance(value, str) and value
               else value for name, value in tls.items()}
    try:
        return Credentials.from_json(tls, f"{path}: tls")
    except CredentialsError as exc:
        raise InventoryError(str(exc)) from None


# -- secured clusters made on this machine -----------------------------------------------------------


def make_authority(directory: Path, cluster_name: str, client_name: str) -> Credentials:
    """The CA in ``directory`` (made unless there is one: certificates it issued, and data written
    under them, stay valid) and an admin client certificate ``client_name``, issued afresh; returns
    that client's credentials. CertsError when a file cannot be made."""
    ca_cert = certs.ensure_ca(directory, cluster_name)
    client = certs.issue_client(directory, client_name, Role.ADMIN, force=True)
    return Credentials(ca=str(ca_cert), cert=str(client.certificate_path), key=str(client.key_path))


def node_tls_settings(directory: Path, node_id: str, addresses: list[str]) -> dict[str, Any]:
    """A fresh certificate for ``node_id`` reached at ``addresses`` from the CA in ``directory``, as
    the node.toml settings that name it, its key and the CA. CertsError when it cannot be issued."""
    issued = certs.issue_node(directory, node_id, addresses, force=True)
    return {"tls_cert": str(issued.certificate_path), "tls_key": str(issued.key_path),
            "tls_ca": str(directory / certs.CA_CERT)}
