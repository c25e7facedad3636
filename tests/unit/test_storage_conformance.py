"""One conformance suite, run against every storage engine (memory and Berkeley DB)."""

from __future__ import annotations

import pytest

from dynamod.core.versions import CausalContext, Record, Sibling, merge_into
from dynamod.storage.bdb import BerkeleyEngine
from dynamod.storage.engine import CorruptRecord
from dynamod.storage.memory import MemoryEngine
from dynamod.storage.store import Store


@pytest.fixture(params=["memory", "bdb"])
def make_engine(request, tmp_path):
    opened = []

    def make(data_dir=None):
        if request.param == "memory":
            engine = MemoryEngine("n1")
        else:
            engine = BerkeleyEngine(str(data_dir or tmp_path / "data"), "n1", sync=True)
        opened.append(engine)
        return engine

    make.kind = request.param
    yield make
    for engine in opened:
        try:
            engine.close()
        except Exception:  # noqa: BLE001 - already closed by the test
            pass


def version(actor: str, counter: int, value: bytes) -> Sibling:
    return Sibling(dot=(actor, counter), past=CausalContext(), value=value)


def put(engine, key: bytes, *siblings: Sibling):
    return engine.apply_batch([(key, lambda record, _: (merge_into(record, siblings), None))])


def test_missing_key_reads_as_none(make_engine):
    assert make_engine().read(b"nothing") is None


def test_update_then_read(make_engine):
    engine = make_engine()
    put(engine, b"k", version("a", 1, b"x"))
    assert engine.read(b"k").siblings == (version("a", 1, b"x"),)


def test_updates_of_one_key_in_one_batch_see_each_other(make_engine):
    engine = make_engine()
    results = engine.apply_batch([
        (b"k", lambda record, _: (merge_into(record, [version("a", 1, b"x")]), 1)),
        (b"k", lambda record, _: (merge_into(record, [version("b", 1, b"y")]), len(record.siblings))),
    ])
    assert results == [1, 1]
    assert len(engine.read(b"k").siblings) == 2


def test_a_failing_update_skips_only_itself(make_engine):
    engine = make_engine()

    def boom(record, _):
        raise ValueError("no")

    results = engine.apply_batch([(b"a", boom), (b"b", lambda record, _: (Record(), "ok"))])
    assert isinstance(results[0], ValueError) and results[1] == "ok"
    assert engine.read(b"a") is None and engine.read(b"b") == Record()


def test_returning_none_deletes(make_engine):
    engine = make_engine()
    put(engine, b"k", version("a", 1, b"x"))
    engine.apply_batch([(b"k", lambda record, _: (None, None))])
    assert engine.read(b"k") is None


def test_allocated_actors_are_fresh_and_carry_the_incarnation(make_engine):
    engine = make_engine()
    actors = engine.apply_batch([(b"k%d" % i, lambda record, allocate: (Record(), allocate())) for i in range(3)])
    assert len(set(actors)) == 3
    assert all(actor.startswith(f"n1~{engine.incarnation}.") for actor in actors)


def test_keys_lists_what_is_stored(make_engine):
    engine = make_engine()
    for key in (b"b", b"a"):
        put(engine, key, version("a", 1, key))
    assert sorted(engine.keys()) == [b"a", b"b"]


def test_corrupt_record_is_reported_not_dropped(make_engine):
    engine = make_engine()
    engine.apply_batch([(b"k", lambda record, _: (Record(), None))])
    if make_engine.kind == "memory":
        engine.data[b"k"] = b"\xc1garbage"
    else:
        engine.records.put(b"k", b"\xc1garbage")
    with pytest.raises(CorruptRecord):
        engine.read(b"k")
    result = engine.apply_batch([(b"k", lambda record, _: (Record(), None))])
    assert isinstance(result[0], CorruptRecord)


def test_store_groups_queued_updates_into_one_batch(make_engine):
    engine = make_engine()
    held = []
    store = Store(engine, writer=lambda fn, *args: held.append((fn, args)) or _deferred_for(held))
    results = []
    for i in range(5):
        store.update(b"k%d" % i, lambda record, _, i=i: (Record(), i)).addCallback(results.append)
    assert store.batches == 1  # the first update went alone; four are waiting for its commit
    _release(held)
    assert store.batches == 2
    _release(held)
    assert results == [0, 1, 2, 3, 4]


def _deferred_for(held):
    from twisted.internet import defer

    d = defer.Deferred()
    held[-1] = (*held[-1], d)
    return d


def _release(held):
    fn, args, d = held.pop(0)
    d.callback(fn(*args))


def test_bdb_survives_reopen_with_same_incarnation(tmp_path):
    engine = BerkeleyEngine(str(tmp_path / "d"), "n1")
    put(engine, b"k", version("a", 1, b"x"))
    actor = engine.apply_batch([(b"j", lambda record, allocate: (Record(), allocate()))])[0]
    incarnation = engine.incarnation
    engine.close()
    again = BerkeleyEngine(str(tmp_path / "d"), "n1")
    try:
        assert again.incarnation == incarnation
        assert again.read(b"k").siblings == (version("a", 1, b"x"),)
        next_actor = again.apply_batch([(b"j", lambda record, allocate: (record, allocate()))])[0]
        assert next_actor != actor
    finally:
        again.close()


def test_bdb_wiped_dir_gets_a_new_incarnation(tmp_path):
    first = BerkeleyEngine(str(tmp_path / "a"), "n1")
    second = BerkeleyEngine(str(tmp_path / "b"), "n1")
    try:
        assert first.incarnation != second.incarnation
    finally:
        first.close()
        second.close()
