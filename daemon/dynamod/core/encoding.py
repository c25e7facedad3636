"""Byte encodings of versions: the client's opaque context, stored records, siblings on the wire.

All three use msgpack. Decoders validate shape and types and raise ``DecodeError`` with a reason,
so a malformed context becomes a 400 and a corrupt record is reported rather than dropped.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import msgpack

from dynamod.core.versions import CausalContext, Record, Sibling

CONTEXT_FORMAT = 1
RECORD_FORMAT = 1


class DecodeError(ValueError):
    """Bytes that do not decode to the expected structure."""


#: Largest counter a context or a version may carry. msgpack encodes integers up to 2**64-1, and a
#: stored counter grows by one per write from the largest it has seen, so a bound well below that
#: keeps every record encodable for good (a client once gave an actor 2**64-2 and the key's next
#: write overflowed). Legitimate counters count writes of one actor epoch: far below this.
MAX_COUNTER = 2**63 - 1

#: Timestamps are milliseconds since the epoch, signed 64-bit like every client's clock.
MIN_TIMESTAMP, MAX_TIMESTAMP = -(2**63), 2**63 - 1


def _is_counter(value: Any) -> bool:
    """A positive integer within ``MAX_COUNTER`` (``type(x) is int`` also refuses bools)."""
    return type(value) is int and 0 < value <= MAX_COUNTER


def unpack(data: bytes) -> Any:
    """msgpack bytes to data; raises ``DecodeError`` on anything else."""
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False)
    except (ValueError, msgpack.UnpackException, TypeError) as exc:
        raise DecodeError(f"not valid msgpack: {exc}") from exc


def _require(condition: bool, reason: str) -> None:
    if not condition:
        raise DecodeError(reason)


def context_to_wire(context: CausalContext) -> list:
    """A context as plain msgpack-able data: ``[vector, cloud]``."""
    return [dict(context.vector), [list(dot) for dot in sorted(context.cloud)]]


def context_from_wire(data: Any) -> CausalContext:
    """Inverse of ``context_to_wire``, validating every field (``type(x) is int`` also refuses bools)."""
    if type(data) is not list or len(data) != 2:
        raise DecodeError("context must be [vector, cloud]")
    vector, cloud = data
    if type(vector) is not dict:
        raise DecodeError("context vector must be a map")
    for actor, n in vector.items():
        if type(actor) is not str or not _is_counter(n):
            raise DecodeError(f"context vector entries must be actor -> int in 1..{MAX_COUNTER}")
    if type(cloud) is not list:
        raise DecodeError("context cloud must be a list")
    if not cloud:
        return CausalContext(vector=vector, cloud=frozenset())
    dots = []
    for dot in cloud:
        if type(dot) is not list or len(dot) != 2 or type(dot[0]) is not str or not _is_counter(dot[1]):
            raise DecodeError(f"context cloud entries must be [actor, int in 1..{MAX_COUNTER}]")
        dots.append((dot[0], dot[1]))
    return CausalContext.of(vector, dots)


def encode_context(context: CausalContext) -> str:
    """The opaque string handed to clients (URL-safe base64, no padding)."""
    if context.is_empty():
        return ""
    packed = msgpack.packb([CONTEXT_FORMAT, *context_to_wire(context)], use_bin_type=True)
    return base64.urlsafe_b64encode(packed).rstrip(b"=").decode("ascii")


def decode_context(text: str) -> CausalContext:
    """Parse a client-supplied context; the empty string is the empty context."""
    text = text.strip()
    if not text:
        return CausalContext()
    try:
        packed = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise DecodeError("context is not base64") from exc
    data = unpack(packed)
    _require(type(data) is list and len(data) == 3 and type(data[0]) is int and data[0] == CONTEXT_FORMAT,
             "context has an unknown format")
    return context_from_wire(data[1:])


def sibling_to_wire(sibling: Sibling) -> list:
    """``[actor, counter, past, value, deleted, timestamp]``."""
    return [sibling.dot[0], sibling.dot[1], context_to_wire(sibling.past), sibling.value,
            sibling.deleted, sibling.timestamp]


def sibling_from_wire(data: Any) -> Sibling:
    """Inverse of ``sibling_to_wire``, validating every field."""
    if type(data) is not list or len(data) != 6:
        raise DecodeError("sibling must have 6 fields")
    actor, counter, past, value, deleted, timestamp = data
    if type(actor) is not str or not _is_counter(counter):
        raise DecodeError("bad sibling dot")
    if type(value) is not bytes:
        raise DecodeError("a sibling's value is not bytes")
    if type(deleted) is not bool:
        raise DecodeError("sibling deleted flag must be a bool")
    if type(timestamp) is not int or not MIN_TIMESTAMP <= timestamp <= MAX_TIMESTAMP:
        raise DecodeError("bad sibling timestamp")
    return Sibling(dot=(actor, counter), past=context_from_wire(past), value=value,
                   deleted=deleted, timestamp=timestamp)


def siblings_to_wire(siblings: tuple[Sibling, ...] | list[Sibling]) -> list:
    """A sibling set as msgpack-able data."""
    return [sibling_to_wire(s) for s in siblings]


def siblings_from_wire(data: Any) -> tuple[Sibling, ...]:
    """Inverse of ``siblings_to_wire``."""
    _require(isinstance(data, list), "siblings must be a list")
    return tuple(sibling_from_wire(item) for item in data)


def encode_record(record: Record) -> bytes:
    """A stored record as bytes."""
    return msgpack.packb([RECORD_FORMAT, record.actor, record.counter, siblings_to_wire(record.siblings),
                          sorted(record.hints)], use_bin_type=True)


def decode_record(data: bytes) -> Record:
    """Inverse of ``encode_record``; raises ``DecodeError`` on anything else."""
    value = unpack(data)
    _require(type(value) is list and len(value) == 5 and type(value[0]) is int and value[0] == RECORD_FORMAT,
             "record has an unknown format")
    _, actor, counter, siblings, hints = value
    _require(actor is None or isinstance(actor, str), "record actor must be a string")
    _require(type(counter) is int and 0 <= counter <= MAX_COUNTER, "record counter must be a natural number")
    _require(isinstance(hints, list) and all(isinstance(h, str) for h in hints), "record hints must be names")
    return Record(siblings=siblings_from_wire(siblings), actor=actor, counter=counter, hints=frozenset(hints))
