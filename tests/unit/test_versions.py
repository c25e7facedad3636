"""Versions: causal contexts, reconciliation and the coordinator's stamp (Dynamo §4.4)."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from dynamod.core.versions import (
    CausalContext,
    Record,
    Sibling,
    after_handoff,
    context_of,
    live_values,
    merge_into,
    put_version,
    reconcile,
    reconcile_lww,
    with_hint,
)

ACTORS = ["a", "b", "c"]


def dots(max_counter: int = 6):
    return st.tuples(st.sampled_from(ACTORS), st.integers(1, max_counter))


def contexts():
    return st.builds(
        CausalContext.of,
        st.dictionaries(st.sampled_from(ACTORS), st.integers(0, 5), max_size=3),
        st.frozensets(dots(9), max_size=5),
    )


@st.composite
def histories(draw, max_versions: int = 12):
    """Causally consistent versions: each new version saw the clocks of some earlier ones."""
    counters = dict.fromkeys(ACTORS, 0)
    versions: list[Sibling] = []
    for index in range(draw(st.integers(0, max_versions))):
        actor = draw(st.sampled_from(ACTORS))
        counters[actor] += 1
        seen = draw(st.lists(st.sampled_from(versions), max_size=3)) if versions else []
        versions.append(Sibling(dot=(actor, counters[actor]), past=context_of(seen), value=b"v%d" % index))
    return versions


def subsets(versions):
    return st.lists(st.sampled_from(versions), max_size=len(versions)) if versions else st.just([])


@given(contexts(), contexts())
def test_context_join_is_commutative(a, b):
    assert a.join(b) == b.join(a)


@given(contexts(), contexts(), contexts())
def test_context_join_is_associative(a, b, c):
    assert a.join(b).join(c) == a.join(b.join(c))


@given(contexts())
def test_context_join_is_idempotent(a):
    assert a.join(a) == a


@given(contexts(), contexts())
def test_join_descends_from_both(a, b):
    joined = a.join(b)
    assert joined.descends(a) and joined.descends(b)


@given(contexts(), contexts(), contexts())
def test_descends_is_a_partial_order(a, b, c):
    assert a.descends(a)
    if a.descends(b) and b.descends(a):
        assert a == b
    if a.descends(b) and b.descends(c):
        assert a.descends(c)


@given(contexts(), dots())
def test_descends_agrees_with_dot_membership(a, dot):
    assert a.add(dot).contains(dot)
    assert a.descends(CausalContext.of({}, {dot})) == a.contains(dot)


def test_normalisation_folds_contiguous_cloud_dots():
    assert CausalContext.of({"a": 1}, {("a", 2), ("a", 3), ("b", 2)}) == \
        CausalContext(vector={"a": 3}, cloud=frozenset({("b", 2)}))


def test_a_context_can_have_seen_a_later_dot_but_not_an_earlier_one():
    context = CausalContext.of({}, {("a", 2)})
    assert context.contains(("a", 2)) and not context.contains(("a", 1))


@given(contexts(), st.integers(0, 8))
def test_truncation_only_forgets(a, bound):
    truncated = a.truncate(bound)
    assert truncated.size() <= max(bound, 0)
    assert a.descends(truncated)


@given(histories().flatmap(lambda vs: st.tuples(subsets(vs), subsets(vs))))
def test_reconcile_is_commutative(pair):
    x, y = pair
    assert reconcile(x, y) == reconcile(y, x)


@given(histories().flatmap(lambda vs: st.tuples(subsets(vs), subsets(vs), subsets(vs))))
def test_reconcile_is_associative(triple):
    x, y, z = triple
    assert reconcile(reconcile(x, y), z) == reconcile(x, reconcile(y, z))


@given(histories().flatmap(subsets))
def test_reconcile_is_idempotent(x):
    once = reconcile(x)
    assert reconcile(once, once) == once == reconcile(x, x)


@given(histories().flatmap(subsets))
def test_reconcile_drops_only_superseded_versions(x):
    survivors = reconcile(x)
    for version in x:
        assert version in survivors or any(s.supersedes(version) for s in survivors)
    for a, b in itertools.permutations(survivors, 2):
        assert not a.supersedes(b)


def _allocator(prefix: str):
    counter = itertools.count(1)
    return lambda: f"{prefix}.{next(counter)}"


def test_blind_concurrent_puts_become_siblings():
    allocate = _allocator("n1")
    record, first = put_version(None, value=b"x", context=CausalContext(), allocate_actor=allocate, timestamp=1)
    record, second = put_version(record, value=b"y", context=CausalContext(), allocate_actor=allocate,
                                 timestamp=2)
    assert live_values(record.siblings) == [b"x", b"y"]
    assert first.dot != second.dot


def test_put_with_merged_context_resolves_siblings():
    allocate = _allocator("n1")
    record, _ = put_version(None, value=b"x", context=CausalContext(), allocate_actor=allocate, timestamp=1)
    record, _ = put_version(record, value=b"y", context=CausalContext(), allocate_actor=allocate, timestamp=2)
    record, _ = put_version(record, value=b"xy", context=context_of(record.siblings), allocate_actor=allocate,
                            timestamp=3)
    assert live_values(record.siblings) == [b"xy"]


def test_context_returned_by_a_put_does_not_cover_a_concurrent_write():
    """A client that wrote blind and then writes again with its PUT's context must not
    overwrite another client's concurrent write made through the same coordinator."""
    allocate = _allocator("n1")
    record, _ = put_version(None, value=b"other", context=CausalContext(), allocate_actor=allocate, timestamp=1)
    record, mine = put_version(record, value=b"mine", context=CausalContext(), allocate_actor=allocate,
                               timestamp=2)
    record, _ = put_version(record, value=b"mine2", context=mine.clock(), allocate_actor=allocate, timestamp=3)
    assert live_values(record.siblings) == [b"other", b"mine2"]


def test_a_new_record_epoch_never_reuses_a_dot():
    """A record deleted and re-created (or a wiped node) allocates a fresh actor, so an old
    version still alive elsewhere is not shadowed by a new one with the same dot (kv679)."""
    allocate = _allocator("n1")
    _, old = put_version(None, value=b"old", context=CausalContext(), allocate_actor=allocate, timestamp=1)
    _, new = put_version(None, value=b"new", context=CausalContext(), allocate_actor=allocate, timestamp=2)
    assert old.dot != new.dot
    assert live_values(reconcile((old,), (new,))) == [b"old", b"new"]


def test_a_context_claiming_dots_this_epoch_never_issued_starts_a_new_epoch():
    """A forged context gave the coordinator's own actor 2**63-1 (issue 14: the next write used to
    overflow and the key stayed unwritable): the claim is ignored for counting, the write gets a
    fresh epoch, the record still encodes, and later writes through the node keep working."""
    from dynamod.core.encoding import MAX_COUNTER, decode_record, encode_record

    allocate = _allocator("n1")
    record, first = put_version(None, value=b"x", context=CausalContext(), allocate_actor=allocate, timestamp=1)
    forged = CausalContext.of({first.dot[0]: MAX_COUNTER})
    record, planted = put_version(record, value=b"y", context=forged, allocate_actor=allocate, timestamp=2)
    assert planted.dot[0] != first.dot[0] and planted.dot[1] == 1
    assert decode_record(encode_record(record)) == record
    for timestamp in range(3, 6):
        record, later = put_version(record, value=b"z", context=CausalContext(), allocate_actor=allocate,
                                    timestamp=timestamp)
        assert later.dot[1] < 10 and not any(s.past.contains(later.dot) for s in record.siblings)
        assert decode_record(encode_record(record)) == record
    assert b"z" in live_values(record.siblings)


@given(histories(), contexts())
def test_a_new_dot_is_never_already_seen_by_a_stored_version_or_the_context(versions, context):
    allocate = _allocator("n1")
    record = Record(siblings=reconcile(versions), actor="a", counter=max(
        [v.dot[1] for v in versions if v.dot[0] == "a"], default=0))
    record, new = put_version(record, value=b"n", context=context, allocate_actor=allocate, timestamp=1)
    assert not context.contains(new.dot)
    assert not any(v.dot == new.dot or v.past.contains(new.dot) for v in versions)


def test_lww_keeps_only_the_newest_timestamp():
    allocate = _allocator("n1")
    record, _ = put_version(None, value=b"late", context=CausalContext(), allocate_actor=allocate,
                            timestamp=20, lww=True)
    record, _ = put_version(record, value=b"early", context=CausalContext(), allocate_actor=allocate,
                            timestamp=10, lww=True)
    assert live_values(record.siblings) == [b"late"]
    assert reconcile_lww(()) == ()


class ReplicatedObject(RuleBasedStateMachine):
    """Three replicas of one key take writes (with contexts clients read), exchange sibling sets,
    and lose records; no acknowledged version may disappear without a descendant."""

    @initialize()
    def setup(self):
        self.records: list[Record | None] = [None, None, None]
        self.epochs = [0, 0, 0]
        self.contexts: list[CausalContext] = [CausalContext()]
        self.written: dict[tuple, Sibling] = {}
        self.values = itertools.count()

    def _allocate(self, replica: int):
        def allocate() -> str:
            self.epochs[replica] += 1
            return f"r{replica}.{self.epochs[replica]}"
        return allocate

    @rule(replica=st.integers(0, 2), which=st.integers(0, 1000), deleted=st.booleans())
    def put(self, replica, which, deleted):
        context = self.contexts[which % len(self.contexts)]
        before = self.records[replica].siblings if self.records[replica] else ()
        record, version = put_version(self.records[replica], value=b"%d" % next(self.values), context=context,
                                      allocate_actor=self._allocate(replica), timestamp=0, deleted=deleted)
        assert version.dot not in self.written, "a dot was issued twice"
        self.written[version.dot] = version
        self.records[replica] = record
        expected = {s.dot for s in before if not context.contains(s.dot)} | {version.dot}
        assert {s.dot for s in record.siblings} == expected
        self.contexts.append(version.clock())

    @rule(replica=st.integers(0, 2))
    def read(self, replica):
        if self.records[replica]:
            self.contexts.append(context_of(self.records[replica].siblings))

    @rule(source=st.integers(0, 2), destination=st.integers(0, 2))
    def replicate(self, source, destination):
        if self.records[source] and source != destination:
            self.records[destination] = merge_into(self.records[destination], self.records[source].siblings)

    @precondition(lambda self: any(self.records))
    @rule(replica=st.integers(0, 2))
    def hand_off_and_drop_record(self, replica):
        """Like a fallback after hinted handoff: give the record to a peer, then delete it."""
        if self.records[replica]:
            peer = (replica + 1) % 3
            self.records[peer] = merge_into(self.records[peer], self.records[replica].siblings)
        self.records[replica] = None

    @invariant()
    def every_written_version_survives_or_has_a_descendant(self):
        if not hasattr(self, "records"):
            return
        alive = [s for r in self.records if r for s in r.siblings]
        for version in self.written.values():
            assert version in alive or any(s.supersedes(version) for s in alive), \
                f"version {version.dot} was lost without a descendant"
        everywhere = reconcile(*(r.siblings for r in self.records if r))
        for version in alive:
            assert version in everywhere or any(s.supersedes(version) for s in everywhere)


TestReplicatedObject = ReplicatedObject.TestCase
TestReplicatedObject.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)


def _version(actor: str, counter: int, past: CausalContext | None = None) -> Sibling:
    return Sibling(dot=(actor, counter), past=past or CausalContext(), value=b"%s%d" % (actor.encode(), counter))


def test_a_handed_off_record_is_dropped_once_its_last_owner_acknowledged():
    v = _version("a", 1)
    record = with_hint(with_hint(Record(siblings=(v,)), "n3"), "n4")
    record = after_handoff(record, "n3", [v], keep_copy=False)
    assert record.hints == {"n4"}
    assert after_handoff(record, "n4", [v], keep_copy=False) is None
    assert after_handoff(with_hint(Record(siblings=(v,)), "n3"), "n3", [v], keep_copy=True).hints == frozenset()


def test_a_write_that_arrived_during_handoff_keeps_the_hint():
    delivered = _version("a", 1)
    record = with_hint(Record(siblings=(delivered, _version("b", 1))), "n3")
    assert after_handoff(record, "n3", [delivered], keep_copy=False) == record


def test_versions_superseded_by_delivered_ones_count_as_delivered():
    old = _version("a", 1)
    new = _version("a", 2, past=old.clock())
    record = with_hint(Record(siblings=(old,)), "n3")
    assert after_handoff(record, "n3", [new], keep_copy=False) is None
