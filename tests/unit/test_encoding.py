"""Codecs: contexts, records and siblings round-trip, and garbage is refused with a reason."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dynamod.core.encoding import (
    DecodeError,
    decode_context,
    decode_record,
    encode_context,
    encode_record,
    siblings_from_wire,
    siblings_to_wire,
)
from dynamod.core.versions import CausalContext, Record, Sibling

actors = st.text(min_size=1, max_size=12)
contexts = st.builds(CausalContext.of, st.dictionaries(actors, st.integers(0, 2**40), max_size=4),
                     st.frozensets(st.tuples(actors, st.integers(1, 2**40)), max_size=4))
siblings = st.builds(Sibling, dot=st.tuples(actors, st.integers(1, 2**40)), past=contexts,
                     value=st.binary(max_size=64), deleted=st.booleans(), timestamp=st.integers(0, 2**62))
records = st.builds(Record, siblings=st.lists(siblings, max_size=4).map(tuple),
                    actor=st.none() | actors, counter=st.integers(0, 2**40),
                    hints=st.frozensets(actors, max_size=3))


@given(contexts)
def test_context_round_trip(context):
    assert decode_context(encode_context(context)) == context


def test_empty_context_is_the_empty_string():
    assert encode_context(CausalContext()) == ""
    assert decode_context("") == CausalContext()


@given(records)
def test_record_round_trip(record):
    assert decode_record(encode_record(record)) == record


@given(st.lists(siblings, max_size=4))
def test_siblings_round_trip(items):
    assert siblings_from_wire(siblings_to_wire(items)) == tuple(items)


@pytest.mark.parametrize("text", ["!!!", "abc", "kQ", msgpack.packb([9, {}, []]).hex()])
def test_garbage_contexts_are_refused(text):
    with pytest.raises(DecodeError):
        decode_context(text)


@given(st.binary(max_size=64))
def test_random_bytes_never_decode_to_a_record_silently(data):
    try:
        record = decode_record(data)
    except DecodeError:
        return
    assert isinstance(record, Record)


@pytest.mark.parametrize("value", [
    [1, None, -1, [], []],
    [1, None, 0, [["a", 0, [{}, []], b"", False, 0]], []],
    [1, None, 0, [["a", 1, [{"b": "x"}, []], b"", False, 0]], []],
    [1, 7, 0, [], []],
    [1, None, 0, [], [3]],
    [2, None, 0, [], []],
    [1, None, 0, []],
])
def test_malformed_records_are_refused(value):
    with pytest.raises(DecodeError):
        decode_record(msgpack.packb(value, use_bin_type=True))


def _context_text(data) -> str:
    import base64

    return base64.urlsafe_b64encode(msgpack.packb(data, use_bin_type=True)).rstrip(b"=").decode("ascii")


@pytest.mark.parametrize("data", [
    [True, {"a": 1}, []],                      # a bool is not the format number
    [1.0, {"a": 1}, []],
    [1, {"a": 2**63}, []],                     # counters past MAX_COUNTER (2**63-1) ...
    [1, {"a": 2**64 - 2}, []],
    [1, {}, [["a", 2**63]]],
    [1, {"a": True}, []],
    [1, {"a": 1.5}, []],
    [1, {"a": 0}, []],
    [1, {"a": -1}, []],
    [1, {1: 1}, []],
])
def test_contexts_with_a_wrongly_typed_format_or_out_of_range_counters_are_refused(data):
    with pytest.raises(DecodeError):
        decode_context(_context_text(data))


def test_a_context_at_the_counter_bound_is_accepted():
    from dynamod.core.encoding import MAX_COUNTER

    assert decode_context(_context_text([1, {"a": MAX_COUNTER}, [["b", MAX_COUNTER]]])).contains(("b", MAX_COUNTER))


@pytest.mark.parametrize("value", [
    [True, None, 0, [], []],
    [1, None, 2**63, [], []],
    [1, None, 0, [["a", 2**63, [{}, []], b"", False, 0]], []],
    [1, None, 0, [["a", 1, [{}, []], b"", False, 2**63]], []],
])
def test_records_with_a_bool_format_or_out_of_range_numbers_are_refused(value):
    with pytest.raises(DecodeError):
        decode_record(msgpack.packb(value, use_bin_type=True))
