"""Bearer tokens for the HTTP API, for clients that cannot present a certificate.

A token file holds one line per token, ``NAME ROLE SHA256HEX``; ``#`` starts a comment line and
blank lines are ignored. Only the digest is stored: the plaintext is shown once, when
``dynactl certs token`` makes it. A token authenticates as ``Principal("client", NAME, ROLE)``.
Pure except ``load_tokens``: the node reads the file and hands the text to ``parse_tokens``.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import string
from pathlib import Path

import attrs

from dynamod.security.identity import Principal, Role, check_name

#: Length of a SHA-256 digest in hex.
DIGEST_LENGTH = 64


class TokenFileError(ValueError):
    """A token file that cannot be read or has a bad line (``line`` is its 1-based number)."""

    def __init__(self, message: str, line: int | None = None):
        super().__init__(message)
        self.line = line


def new_token() -> str:
    """A fresh random token: 256 bits, URL-safe text."""
    return secrets.token_urlsafe(32)


def token_digest(token: str) -> str:
    """The hex digest stored in place of ``token``."""
    # Tokens are 256 random bits, so no dictionary or brute-force search can find one from its
    # digest: an unsalted fast hash is enough, and a slow password hash would only slow every request.
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def format_line(name: str, role: Role, digest: str) -> str:
    """The token-file line (without newline) for ``name`` with ``role`` and ``digest``."""
    try:
        check_name(name)
    except ValueError as exc:
        raise TokenFileError(str(exc)) from None
    if name.startswith("#"):
        raise TokenFileError(f"a token name cannot start with '#' (it would read as a comment): {name!r}")
    if not _is_digest(digest):
        raise TokenFileError(f"not a SHA-256 hex digest: {digest!r}")
    return f"{name} {role.label} {digest.lower()}"


def _is_digest(text: str) -> bool:
    return len(text) == DIGEST_LENGTH and all(c in string.hexdigits for c in text)


@attrs.frozen
class TokenEntry:
    name: str
    role: Role
    digest: str  # lower-case hex


@attrs.frozen
class TokenTable:
    """The tokens a node accepts."""

    entries: tuple[TokenEntry, ...] = ()

    def __len__(self) -> int:
        return len(self.entries)

    def names(self) -> frozenset[str]:
        return frozenset(entry.name for entry in self.entries)

    def authenticate(self, token: str) -> Principal | None:
        """The client ``token`` belongs to, or None."""
        if not token:
            return None
        try:
            presented = token_digest(token)
        except UnicodeEncodeError:  # lone surrogates: no token we made
            return None
        found = None
        # Compare with every entry, in constant time, so timing tells nothing about the digests.
        for entry in self.entries:
            if hmac.compare_digest(presented, entry.digest):
                found = entry
        return None if found is None else Principal("client", found.name, found.role)


def parse_tokens(text: str, source: str = "token file") -> TokenTable:
    """The table in a token file's ``text``; TokenFileError naming ``source`` and the line otherwise."""
    entries: list[TokenEntry] = []
    seen: set[str] = set()
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            entry = _parse_line(line)
        except ValueError as exc:
            raise TokenFileError(f"{source}, line {number}: {exc}", line=number) from None
        if entry.name in seen:
            raise TokenFileError(f"{source}, line {number}: duplicate name {entry.name!r}", line=number)
        seen.add(entry.name)
        entries.append(entry)
    return TokenTable(tuple(entries))


def _parse_line(line: str) -> TokenEntry:
    fields = line.split()
    if len(fields) != 3:
        raise ValueError(f"expected NAME ROLE SHA256HEX (a name has no spaces), got {len(fields)} fields")
    name, role_name, digest = fields
    role = Role.named(role_name)
    if not _is_digest(digest):
        raise ValueError(f"the digest must be {DIGEST_LENGTH} hex digits (SHA-256), got {digest!r}")
    check_name(name)
    return TokenEntry(name, role, digest.lower())


def load_tokens(path: str | Path) -> TokenTable:
    """The table in the token file at ``path``; TokenFileError when it cannot be read or parsed."""
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except OSError as exc:
        raise TokenFileError(f"cannot read token file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise TokenFileError(f"token file {path} is not UTF-8 text") from None
    return parse_tokens(text, source=str(path))
