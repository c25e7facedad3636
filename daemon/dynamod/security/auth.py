"""Who may do what over HTTP (under TLS): a client is named by its certificate or by a bearer
token, and each API operation needs a role. Pure: the HTTP layer asks ``refusal`` per request.

Roles: ``reader`` may read keys; ``writer`` may also write and delete them; ``admin`` may do
everything (``/admin/*``, and ``/metrics`` unless ``metrics_role`` lets a lesser role, or anyone,
read it). A node certificate names a node, which has no business on the HTTP port: refused.
"""

from __future__ import annotations

from typing import Any, Protocol

import attrs

from dynamod.security.identity import Principal, Role

#: ``metrics_role`` value that lets anyone read ``/metrics`` (a Prometheus without credentials).
ANONYMOUS = "anonymous"

#: The role each operation of the API (``Api._route``'s names) needs; any other needs admin.
#: ``kv`` (an unsupported method on a key) and ``other`` (no such path) are answered 405/404 to
#: any authenticated client.
OPERATION_ROLES: dict[str, Role] = {
    "get": Role.READER, "put": Role.WRITER, "delete": Role.WRITER, "kv": Role.READER, "other": Role.READER,
}


class TokenTable(Protocol):
    def authenticate(self, token: str) -> Principal | None: ...


@attrs.frozen
class Refusal:
    """Why a request may not proceed: 401 (who are you?) or 403 (not you)."""

    status: int
    reason: str


@attrs.frozen
class Authenticator:
    """Checks each request's credentials against the role its operation needs."""

    tokens: TokenTable | None
    metrics_role: str = "reader"

    def required_role(self, op: str) -> Role | None:
        """The role ``op`` needs (None: anyone may)."""
        if op == "metrics":
            return None if self.metrics_role == ANONYMOUS else Role.named(self.metrics_role)
        return OPERATION_ROLES.get(op, Role.ADMIN)

    def principal(self, certified: Principal | None, authorization: bytes | None) -> Principal | Refusal | None:
        """Whom the request comes from: its certificate's principal, else its bearer token's."""
        if certified is not None:
            return certified
        if authorization is None:
            return None
        scheme, _, token = authorization.decode("latin-1").strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return Refusal(401, "the Authorization header must be 'Bearer TOKEN'")
        found = self.tokens.authenticate(token.strip()) if self.tokens is not None else None
        return found if found is not None else Refusal(401, "unknown bearer token")

    def refusal(self, op: str, certified: Principal | None, authorization: bytes | None) -> Refusal | None:
        """None if the request may go on, else the 401 or 403 to answer."""
        needed = self.required_role(op)
        if needed is None:
            return None
        who = self.principal(certified, authorization)
        if isinstance(who, Refusal):
            return who
        if who is None:
            return Refusal(401, "authentication required: a client certificate of the cluster CA or a bearer token")
        if who.is_node:
            return Refusal(403, f"{who.describe()}: node certificates are for the peer port")
        if who.role < needed:
            return Refusal(403, f"{who.describe()} may not {op} (needs {needed.label})")
        return None


def node_authenticator(config: Any) -> Authenticator | None:
    """Who may do what over a node's HTTP port: only under TLS (without it the port is open to
    anyone who can reach it, as README says)."""
    if not config.tls:
        return None
    from dynamod.security.tokens import load_tokens

    tokens = load_tokens(config.auth_tokens) if config.auth_tokens else None
    return Authenticator(tokens, metrics_role=config.metrics_role)
