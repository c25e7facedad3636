"""One conformance suite, run against every storage engine (memory and Berkeley DB), and the
Store's update semantics (applied at once, acknowledged after a group flush, actor allocation) on
top of each."""

from __future__ import annotations

import subprocess
import sys

import pytest
from twisted.internet import defer

from dynamod.core.encoding import encode_record
from dynamod.core.versions import CausalContext, Record, Sibling, merge_into, put_version
from dynamod.storage.bdb import BerkeleyEngine
from dynamod.storage.engine import CorruptRecord
from dynamod.storage.memory import MemoryEngine
from dynamod.storage.store import StorageBroken, Store
from tests.sim import fired


@pytest.fixture(params=["memory", "bdb"])
def make_engine(request, tmp_path):
    opened = []

    def make(data_dir=None):
        if request.param == "memory":
            engine = MemoryEngine()
        else:
            engine = BerkeleyEngine(str(data_dir or tmp_path / "data"), sync=True)
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


def record_of(*siblings: Sibling) -> Record:
    return Record(siblings=tuple(siblings))


# -- engines -------------------------------------------------------------------------------


def test_missing_key_reads_as_none(make_engine):
    assert make_engine().read(b"nothing") is None


def test_a_transaction_writes_and_deletes(make_engine):
    engine = make_engine()
    engine.apply([(b"a", encode_record(record_of(version("x", 1, b"1")))),
                  (b"b", encode_record(record_of(version("x", 2, b"2"))))])
    engine.apply([(b"a", None), (b"missing", None)])
    assert engine.read(b"a") is None
    assert engine.read(b"b") == record_of(version("x", 2, b"2"))
    assert sorted(engine.keys()) == [b"b"]
    engine.flush()
    assert sorted(engine.keys()) == [b"b"]


def test_the_epoch_reservation_only_grows(make_engine):
    engine = make_engine()
    engine.reserve_epochs(5)
    engine.reserve_epochs(3)
    assert engine.epoch == 5


def test_corrupt_record_is_reported_not_dropped(make_engine):
    engine = make_engine()
    engine.apply([(b"k", b"\xc1garbage")])
    with pytest.raises(CorruptRecord):
        engine.read(b"k")
    [result] = engine.read_many([b"k"])
    assert isinstance(result, CorruptRecord)


def test_bdb_survives_reopen_with_same_incarnation_and_epoch(tmp_path):
    engine = BerkeleyEngine(str(tmp_path / "d"))
    engine.apply([(b"k", encode_record(record_of(version("a", 1, b"x"))))])
    engine.reserve_epochs(7)
    engine.flush()
    incarnation = engine.incarnation
    engine.close()
    again = BerkeleyEngine(str(tmp_path / "d"))
    try:
        assert (again.incarnation, again.epoch) == (incarnation, 7)
        assert again.read(b"k") == record_of(version("a", 1, b"x"))
    finally:
        again.close()


def test_bdb_wiped_dir_gets_a_new_incarnation(tmp_path):
    first = BerkeleyEngine(str(tmp_path / "a"))
    second = BerkeleyEngine(str(tmp_path / "b"))
    try:
        assert first.incarnation != second.incarnation
    finally:
        first.close()
        second.close()


# -- the store on each engine ----------------------------------------------------------------


class HeldFlusher:
    """A flusher runner whose flushes run only when the test says so."""

    def __init__(self):
        self.held: list[tuple] = []

    def __call__(self, fn, *args):
        waiter = defer.Deferred()
        self.held.append((fn, args, waiter))
        return waiter

    def flush_next(self):
        fn, args, waiter = self.held.pop(0)
        waiter.callback(fn(*args))

    def fail_next(self):
        _, _, waiter = self.held.pop(0)
        waiter.errback(RuntimeError("disk full"))


def merge(*siblings: Sibling):
    return lambda record, _: (merge_into(record, siblings), len(merge_into(record, siblings).siblings))


def test_update_then_get(make_engine):
    store = Store(make_engine(), "n1")
    assert fired(store.update(b"k", merge(version("a", 1, b"x")))) == 1
    assert fired(store.get(b"k")).siblings == (version("a", 1, b"x"),)


def test_updates_see_earlier_unflushed_updates_and_are_acknowledged_in_groups(make_engine):
    engine = make_engine()
    flusher = HeldFlusher()
    store = Store(engine, "n1", flusher=flusher)
    results = []
    for i in range(5):
        store.update(b"k", merge(version("a", i + 1, b"%d" % i))).addCallback(results.append)
    assert results == [] and store.batches == 1  # the first went alone; four wait for its flush
    assert fired(store.get(b"k")).siblings[-1].value == b"4"  # reads see applied, unflushed versions
    flusher.flush_next()
    assert results == [1] and store.batches == 2
    flusher.flush_next()
    assert results == [1, 2, 3, 4, 5]
    assert len(engine.read(b"k").siblings) == 5


def test_a_failed_flush_fails_its_updates_and_every_later_one(make_engine):
    engine = make_engine()
    flusher = HeldFlusher()
    store = Store(engine, "n1", flusher=flusher)
    failures = []
    store.update(b"k", merge(version("a", 1, b"x"))).addErrback(failures.append)
    store.update(b"k", merge(version("a", 2, b"y"))).addErrback(failures.append)
    flusher.fail_next()  # a later fsync could succeed over the hole this one left
    assert len(failures) == 2 and store.broken is not None
    with pytest.raises(StorageBroken):
        fired(store.update(b"j", merge(version("a", 3, b"z"))))
    assert fired(store.drain()) is None


def test_a_raising_update_stages_nothing(make_engine):
    store = Store(make_engine(), "n1")

    def boom(record, _):
        raise ValueError("no")

    with pytest.raises(ValueError):
        fired(store.update(b"a", boom))
    assert fired(store.get(b"a")) is None


def test_an_update_replaces_a_corrupt_record_as_if_nothing_were_held(make_engine):
    engine = make_engine()
    engine.apply([(b"k", b"\xc1garbage")])
    noted = []
    store = Store(engine, "n1", on_corrupt=noted.append)
    with pytest.raises(CorruptRecord):
        fired(store.get(b"k"))  # readers are told, never handed "absent"
    seen = []
    assert fired(store.update(b"k", lambda record, _: (seen.append(record) or merge_into(record, (
        version("a", 1, b"x"),)), True))) is True
    assert seen == [None] and noted == [b"k"]  # counted once, however often it is met
    assert engine.read(b"k").siblings == (version("a", 1, b"x"),)
    assert store.corrupt_keys == set()


def test_allocated_actors_are_fresh_across_restarts(tmp_path):
    engine = BerkeleyEngine(str(tmp_path / "d"))
    store = Store(engine, "n1")
    first = fired(store.update(b"k", lambda record, allocate: (Record(), allocate())))
    second = fired(store.update(b"j", lambda record, allocate: (Record(), allocate())))
    assert first != second and first.startswith(f"n1~{engine.incarnation}.")
    engine.close()
    again = BerkeleyEngine(str(tmp_path / "d"))
    try:
        third = fired(Store(again, "n1").update(b"x", lambda record, allocate: (Record(), allocate())))
        assert third not in (first, second)
    finally:
        again.close()


#: A child node whose first flush runs and whose later ones never do: it dies (os._exit) first.
CRASH_PRELUDE = """
import os, sys
from twisted.internet import defer
from dynamod.core.versions import CausalContext, Record, put_version
from dynamod.storage.bdb import BerkeleyEngine
from dynamod.storage.store import Store

flushes = []

def flusher(fn, *args):
    if flushes:
        return defer.Deferred()
    flushes.append(fn)
    return defer.maybeDeferred(fn, *args)

store = Store(BerkeleyEngine(sys.argv[1]), "n1", flusher=flusher)
"""

CRASHING_NODE = CRASH_PRELUDE + """
acknowledged = []
for key in (b"flushed", b"unflushed"):
    store.update(key, lambda record, allocate: (Record(actor=allocate()), None)).addCallback(acknowledged.append)
print(store.engine.read(b"flushed").actor, store.engine.read(b"unflushed").actor, len(acknowledged), flush=True)
os._exit(0)  # no close, no checkpoint: what a kill -9 leaves
"""


def test_a_crash_keeps_acknowledged_updates_and_never_reissues_an_epoch(tmp_path):
    data_dir = str(tmp_path / "d")
    child = subprocess.run([sys.executable, "-c", CRASHING_NODE, data_dir], capture_output=True, text=True,
                           timeout=60, check=True)
    flushed_actor, unflushed_actor, acknowledged = child.stdout.split()
    assert acknowledged == "1"  # the second update was applied (and its actor sent out) but never flushed
    engine = BerkeleyEngine(data_dir)
    try:
        assert engine.read(b"flushed").actor == flushed_actor
        store = Store(engine, "n1")
        fresh = [fired(store.update(b"k%d" % i, lambda record, allocate: (Record(), allocate()))) for i in range(3)]
        assert not {flushed_actor, unflushed_actor} & set(fresh)
    finally:
        engine.close()


ROLLED_BACK_NODE = CRASH_PRELUDE + """
def write(value):
    def stamp(record, allocate):
        new, version = put_version(record, value=value, context=CausalContext(), allocate_actor=allocate,
                                   timestamp=0)
        return new, version.dot
    return stamp

dots = []
for value in (b"flushed", b"sent to the other replicas, never flushed here"):
    dots.append(store.stage(b"k", write(value))[0])
print(*dots[1], flush=True)
os._exit(0)
"""


def test_a_dot_sent_out_before_a_crash_is_never_issued_again(tmp_path):
    """kv679: the coordinator's record rolls back to the flushed counter, but the unflushed dot is
    already at the other replicas; the next version must not get the same dot."""
    data_dir = str(tmp_path / "d")
    child = subprocess.run([sys.executable, "-c", ROLLED_BACK_NODE, data_dir], capture_output=True, text=True,
                           timeout=60, check=True)
    actor, counter = child.stdout.split()
    engine = BerkeleyEngine(data_dir)
    try:
        store = Store(engine, "n1")

        def stamp(record, allocate):
            new, version = put_version(record, value=b"after the restart", context=CausalContext(),
                                       allocate_actor=allocate, timestamp=0)
            return new, version.dot

        assert fired(store.update(b"k", stamp)) != (actor, int(counter))
    finally:
        engine.close()
