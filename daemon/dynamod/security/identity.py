"""Who a certificate speaks for: the cluster's X.509 naming, written (``dynactl certs``) and read
(the nodes) in this one place.

A certificate from the cluster CA names its holder in a subject-alternative-name URI:
``dynamo:node:<node id>`` for a node (its peer and HTTP addresses ride along as DNS/IP names), or
``dynamo:client:<role>:<name>`` for a client of the HTTP API (``dynactl``, ``dynacheck``, an
application, Prometheus). The subject's common name repeats the id or name for people reading the
certificate; only the URI counts. A certificate with no such URI, or with more than one, names no
one. Pure: no I/O.
"""

from __future__ import annotations

import enum

import attrs
from cryptography import x509

URI_PREFIX = "dynamo:"


class Role(enum.IntEnum):
    """What a client may do over HTTP; each role may do what the ones below it may."""

    READER = 1  # GET and HEAD of keys
    WRITER = 2  # and PUT, DELETE
    ADMIN = 3  # and everything else: /admin/*, /metrics

    @classmethod
    def named(cls, name: str) -> Role:
        """The role called ``name`` (``reader``, ``writer``, ``admin``); ValueError otherwise."""
        try:
            return cls[name.upper()]
        except KeyError:
            raise ValueError(f"unknown role {name!r}: one of {', '.join(ROLE_NAMES)}") from None

    @property
    def label(self) -> str:
        return self.name.lower()


ROLE_NAMES = tuple(role.label for role in Role)


@attrs.frozen
class Principal:
    """A node (``role`` None) or a client with its role."""

    kind: str  # "node" or "client"
    name: str
    role: Role | None = None

    @property
    def is_node(self) -> bool:
        return self.kind == "node"

    def describe(self) -> str:
        return f"node {self.name}" if self.is_node else f"client {self.name} ({self.role.label})"


def node_uri(node_id: str) -> str:
    """The SAN URI of a node certificate."""
    check_name(node_id)
    return f"{URI_PREFIX}node:{node_id}"


def client_uri(name: str, role: Role) -> str:
    """The SAN URI of a client certificate."""
    check_name(name)
    return f"{URI_PREFIX}client:{role.label}:{name}"


def check_name(name: str) -> None:
    """ValueError unless ``name`` can name a node or client (certificates and token files alike)."""
    if not name or not name.isprintable() or any(c.isspace() for c in name):
        raise ValueError(f"a node or client name must be printable, non-empty and without spaces: {name!r}")


def parse_uri(uri: str) -> Principal | None:
    """The principal a ``dynamo:`` URI names, or None if it is not one."""
    if not uri.startswith(URI_PREFIX):
        return None
    kind, _, rest = uri[len(URI_PREFIX):].partition(":")
    if kind == "node" and rest:
        return Principal("node", rest)
    if kind == "client":
        role_name, _, name = rest.partition(":")
        if name and role_name in ROLE_NAMES:
            return Principal("client", name, Role.named(role_name))
    return None


def principal_of(certificate: x509.Certificate) -> Principal | None:
    """Whom ``certificate`` names (its one ``dynamo:`` URI), or None."""
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    found = [p for p in (parse_uri(uri) for uri in names.get_values_for_type(x509.UniformResourceIdentifier))
             if p is not None]
    return found[0] if len(found) == 1 else None
