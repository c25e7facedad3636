"""What a key may be, wherever one arrives (the HTTP API and the peer operations)."""

from __future__ import annotations

#: A key's length bound, in bytes.
MAX_KEY_BYTES = 1024


def key_problem(key: bytes) -> str | None:
    """Why ``key`` is not a key (1..1024 bytes of UTF-8), or None when it is one."""
    if not key:
        return "key is empty"
    if len(key) > MAX_KEY_BYTES:
        return f"key is {len(key)} bytes; the limit is {MAX_KEY_BYTES}"
    try:
        key.decode("utf-8")
    except UnicodeDecodeError:
        return "key is not valid UTF-8"
    return None
