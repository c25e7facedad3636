"""A key's size as stored, and the bound that keeps every key replicable.

Blind writes (no context) add a sibling each; without a bound ~60 one-MiB blind writes to one key
pass the node-to-node frame limit, after which the key can no longer be replicated, handed off or
repaired. Like Riak's sibling/object-size warning and maximum: past ``key_size_warning`` a write is
logged and counted, and a write that would grow a key past ``max_key_size`` is refused (413) with
no effect. A write that does not grow the key (a read-modify-write that supersedes siblings) is
always taken, so a client can always bring an oversized key back under the bound.

``max_key_size`` is at most half the frame limit (``config``): read repair and anti-entropy merge
the versions of two replicas, and the union of two sets under the bound must still fit a frame.
"""

from __future__ import annotations


class KeyTooLarge(Exception):
    """A write refused because it would grow a key's stored versions past ``max_key_size``."""

    def __init__(self, size: int, limit: int):
        super().__init__(f"the write would grow the key's stored versions to {size} bytes, past the "
                         f"max_key_size limit of {limit} bytes; write with the context of a read to "
                         "replace its siblings")
        self.size = size
        self.limit = limit


def check_growth(new_size: int, old_size: int, limit: int) -> None:
    """Raise ``KeyTooLarge`` when a write takes a key from ``old_size`` to ``new_size`` bytes past
    ``limit``; a write that does not grow the key always passes."""
    if new_size > limit and new_size > old_size:
        raise KeyTooLarge(new_size, limit)
