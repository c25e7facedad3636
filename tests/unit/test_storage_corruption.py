"""Damaged Berkeley DB files: the open-time checks move the environment aside, salvage what
verifies into a fresh environment with a new incarnation, and never raise; at run time a failed
environment stops the store and is marked for the next open."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys

import pytest
from twisted.internet import defer

from dynamod.core.encoding import encode_record
from dynamod.core.quorum import Outcome
from dynamod.core.versions import CausalContext, Record, Sibling, live_values
from dynamod.handoff import HandoffService
from dynamod.storage import integrity
from dynamod.storage.bdb import BerkeleyEngine
from dynamod.storage.engine import EnvironmentFailed
from dynamod.storage.memory import MemoryEngine
from dynamod.storage.salvage import P_LBTREE, SalvageReport, salvage_btree
from dynamod.storage.store import StorageBroken, Store
from dynamod.tombstones import TombstoneReaper
from tests.sim import fired, make_cluster

PAGE = 8192
KEYS = 600


def record(i: int, size: int = 900, hints: frozenset[str] = frozenset()) -> Record:
    sibling = Sibling(dot=("n1~old.7", i + 1), past=CausalContext(), value=b"%06d" % i + b"v" * size)
    return Record(siblings=(sibling,), actor="n1~old.7", counter=i + 1, hints=hints)


def filled(data_dir: str, count: int = KEYS, size: int = 900) -> tuple[str, dict[bytes, Record]]:
    """An environment holding ``count`` records, closed cleanly; its incarnation and records."""
    engine = BerkeleyEngine(data_dir)
    records = {b"key-%05d" % i: record(i, size, frozenset({"n4"}) if i == 3 else frozenset()) for i in range(count)}
    items = sorted(records.items())
    for start in range(0, count, 50):
        engine.apply([(key, encode_record(rec)) for key, rec in items[start:start + 50]])
    engine.flush()
    engine.reserve_epochs(500)
    incarnation = engine.incarnation
    engine.close()
    return incarnation, records


def flip(path: str, offset: int, count: int = 4) -> None:
    with open(path, "r+b") as handle:
        handle.seek(offset)
        data = handle.read(count)
        handle.seek(offset)
        handle.write(bytes(b ^ 0x24 for b in data))


def leaf_pages(path: str) -> list[int]:
    with open(path, "rb") as handle:
        data = handle.read()
    return [p for p in range(1, len(data) // PAGE) if data[p * PAGE + 25] == P_LBTREE]


def quarantines(data_dir: str) -> list[str]:
    return sorted(name for name in os.listdir(data_dir) if name.startswith(integrity.QUARANTINE_PREFIX))


def reopen_checks(data_dir: str, old_incarnation: str) -> BerkeleyEngine:
    """Reopen and assert the open-time rule held: moved aside, new incarnation, epochs from 0."""
    engine = BerkeleyEngine(data_dir)
    assert engine.recovery is not None
    assert engine.incarnation != old_incarnation and engine.epoch == 0
    [moved] = quarantines(data_dir)
    assert engine.recovery["quarantined"] == os.path.join(data_dir, moved)
    assert {"records.db", "meta.db"} <= set(os.listdir(engine.recovery["quarantined"]))
    return engine


def salvaged_as_replica_updates(engine: BerkeleyEngine, records: dict[bytes, Record]) -> set[bytes]:
    """Every salvaged record holds exactly the original's siblings and hints, and no actor (the
    next write of each takes a fresh one); returns the salvaged keys."""
    found = set()
    for key in engine.keys():
        salvaged = engine.read(key)
        assert salvaged.siblings == records[key].siblings and salvaged.hints == records[key].hints
        assert salvaged.actor is None and salvaged.counter == 0
        found.add(key)
    return found


def test_a_clean_reopen_keeps_everything_and_moves_nothing(tmp_path):
    incarnation, records = filled(str(tmp_path / "d"))
    engine = BerkeleyEngine(str(tmp_path / "d"))
    try:
        assert engine.recovery is None and engine.incarnation == incarnation and engine.epoch == 500
        assert len(list(engine.keys())) == KEYS and quarantines(str(tmp_path / "d")) == []
    finally:
        engine.close()


def test_flipped_bytes_in_a_data_page_are_found_at_open_and_every_other_page_salvaged(tmp_path):
    data_dir = str(tmp_path / "d")
    incarnation, records = filled(data_dir)
    path = os.path.join(data_dir, "records.db")
    victim = leaf_pages(path)[len(leaf_pages(path)) // 2]
    flip(path, victim * PAGE + 4000)
    with open(path, "rb") as handle:
        damaged = handle.read()
    engine = reopen_checks(data_dir, incarnation)
    try:
        with open(os.path.join(engine.recovery["quarantined"], "records.db"), "rb") as handle:
            assert handle.read() == damaged  # moved aside as it was, never rewritten
        assert engine.recovery["bad_pages"] == 1
        kept = salvaged_as_replica_updates(engine, records)
        assert KEYS - 12 <= len(kept) < KEYS  # one 8 KiB page of ~1 KiB records lost
        fresh = fired(Store(engine, "n1").update(b"key-00001", lambda rec, allocate: (rec, allocate())))
        assert fresh.startswith(f"n1~{engine.incarnation}.")
    finally:
        engine.close()


@pytest.mark.parametrize("cut", [PAGE * 40 + 77, PAGE * 40, 0])
def test_a_truncated_records_file_keeps_the_pages_left(tmp_path, cut):
    data_dir = str(tmp_path / "d")
    incarnation, records = filled(data_dir)
    os.truncate(os.path.join(data_dir, "records.db"), cut)
    engine = reopen_checks(data_dir, incarnation)
    try:
        kept = salvaged_as_replica_updates(engine, records)
        assert (0 < len(kept) < KEYS) if cut else kept == set()
    finally:
        engine.close()


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_damaged_meta_gives_a_new_incarnation_and_keeps_every_record(tmp_path, damage):
    data_dir = str(tmp_path / "d")
    incarnation, records = filled(data_dir)
    meta = os.path.join(data_dir, "meta.db")
    if damage == "flip":
        flip(meta, PAGE + PAGE - 40)  # the leaf holding incarnation and epoch
    else:
        os.truncate(meta, 100)
    engine = reopen_checks(data_dir, incarnation)
    try:
        assert salvaged_as_replica_updates(engine, records) == set(records)
    finally:
        engine.close()


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_a_damaged_log_is_noticed_instead_of_silently_rolling_the_epoch_back(tmp_path, damage):
    """Recovery takes the first record that does not verify for the end of the log; measured, that
    rolled meta.db's epoch reservation back. The identity file's log mark catches it."""
    data_dir = str(tmp_path / "d")
    incarnation, records = filled(data_dir)
    [log] = [name for name in os.listdir(data_dir) if name.startswith("log.")]
    path = os.path.join(data_dir, log)
    if damage == "flip":
        flip(path, 20_000, 16)
    else:
        os.truncate(path, 20_000)
    engine = reopen_checks(data_dir, incarnation)
    try:
        assert "log" in engine.recovery["reason"]
        assert salvaged_as_replica_updates(engine, records) == set(records)
    finally:
        engine.close()


def test_meta_behind_the_identity_file_means_a_lost_commit(tmp_path):
    data_dir = str(tmp_path / "d")
    incarnation, _ = filled(data_dir)
    stored = integrity.read_identity(data_dir)
    integrity.write_identity(data_dir, integrity.Identity(stored.incarnation, stored.epoch + 1, stored.log_mark))
    engine = reopen_checks(data_dir, incarnation)
    engine.close()


def test_damaged_region_files_are_rebuilt_without_losing_anything(tmp_path):
    """Joining damaged region files crashed the library (a segfault); they hold nothing durable."""
    data_dir = str(tmp_path / "d")
    incarnation, _ = filled(data_dir)
    for name in ("__db.001", "__db.002", "__db.003"):
        with open(os.path.join(data_dir, name), "wb") as handle:
            handle.write(os.urandom(4096))
    engine = BerkeleyEngine(data_dir)
    try:
        assert engine.recovery is None and engine.incarnation == incarnation and engine.epoch == 500
        assert len(list(engine.keys())) == KEYS
    finally:
        engine.close()


def test_a_damaged_identity_file_gives_a_new_incarnation(tmp_path):
    data_dir = str(tmp_path / "d")
    incarnation, records = filled(data_dir)
    flip(os.path.join(data_dir, integrity.IDENTITY_FILE), 20, 2)
    engine = reopen_checks(data_dir, incarnation)
    try:
        assert salvaged_as_replica_updates(engine, records) == set(records)
    finally:
        engine.close()


def test_a_runtime_checksum_failure_stops_the_store_and_the_next_open_moves_it_aside(tmp_path):
    data_dir = str(tmp_path / "d")
    incarnation, records = filled(data_dir, count=3000)
    engine = BerkeleyEngine(data_dir, cache_mb=1)  # too small to keep every page: reads go to the file
    fatal = []
    store = Store(engine, "n1", on_fatal=fatal.append)
    path = os.path.join(data_dir, "records.db")
    for page in leaf_pages(path):
        flip(path, page * PAGE + 5000)
    with pytest.raises(EnvironmentFailed):
        for key in sorted(records):
            fired(store.get(key))
    assert len(fatal) == 1 and store.broken is not None
    assert integrity.damage_marker(data_dir) is not None
    with pytest.raises(StorageBroken):
        fired(store.update(b"key-00001", lambda rec, _: (rec, None)))
    engine._abandon()  # a panicked environment cannot be closed
    engine._release_lock()
    again = reopen_checks(data_dir, incarnation)
    try:
        # the checks find the pages themselves; the marker (moved aside with the rest) covers damage
        # they cannot see, such as a free page
        assert "DB_RUNRECOVERY" in again.recovery["reason"]
        assert integrity.damage_marker(data_dir) is None
        assert integrity.damage_marker(again.recovery["quarantined"]) is not None
    finally:
        again.close()


def test_the_damage_marker_alone_moves_an_intact_environment_aside_whole(tmp_path):
    data_dir = str(tmp_path / "d")
    incarnation, records = filled(data_dir)
    integrity.mark_damaged(data_dir, "test")
    engine = reopen_checks(data_dir, incarnation)
    try:
        assert salvaged_as_replica_updates(engine, records) == set(records)
    finally:
        engine.close()


def test_salvage_follows_overflow_chains_and_skips_deleted_items(tmp_path):
    data_dir = str(tmp_path / "d")
    engine = BerkeleyEngine(data_dir)
    values = {b"big-%d" % i: os.urandom(3000 + 7000 * i) for i in range(12)}
    engine.apply(sorted(values.items()))
    engine.apply([(b"big-5", None)])
    del values[b"big-5"]
    engine.close()
    report = SalvageReport()
    assert dict(salvage_btree(os.path.join(data_dir, "records.db"), report)) == values
    assert report.bad_pages == 0 and report.checksummed


def test_a_second_process_cannot_open_the_same_data_dir(tmp_path):
    engine = BerkeleyEngine(str(tmp_path / "d"))
    try:
        with pytest.raises(RuntimeError, match="in use"):
            BerkeleyEngine(str(tmp_path / "d"))
    finally:
        engine.close()


def test_the_identity_file_refuses_a_crc_mismatch(tmp_path):
    integrity.write_identity(str(tmp_path), integrity.Identity("abc", 5, (1, 28)))
    assert integrity.read_identity(str(tmp_path)) == integrity.Identity("abc", 5, (1, 28))
    path = tmp_path / integrity.IDENTITY_FILE
    path.write_bytes(path.read_bytes().replace(b'"epoch": 5', b'"epoch": 4'))
    with pytest.raises(integrity.Damaged):
        integrity.read_identity(str(tmp_path))


# -- the store's rule on a memory engine ---------------------------------------------------------


class FailingEngine(MemoryEngine):
    """A memory engine whose environment fails on the next read or apply."""

    def __init__(self):
        super().__init__()
        self.failing = False
        self.marked: list[str] = []

    def read_raw(self, key):
        if self.failing:
            raise EnvironmentFailed("checksum error: page 7")
        return super().read_raw(key)

    def apply(self, writes):
        if self.failing:
            raise EnvironmentFailed("checksum error: page 7")
        super().apply(writes)

    def mark_damaged(self, reason):
        self.marked.append(reason)


def test_an_environment_failure_is_fatal_once_and_nothing_is_served_after_it():
    engine = FailingEngine()
    fatal = []
    store = Store(engine, "n1", on_fatal=fatal.append)
    fired(store.update(b"k", lambda rec, _: (record(1), None)))
    engine.failing = True
    failures = []
    store.get(b"k").addErrback(failures.append)
    with pytest.raises(EnvironmentFailed):
        store.get_raw(b"k")  # a peer's read gets an error, never bytes
    assert [f.type for f in failures] == [EnvironmentFailed]
    assert fatal == ["checksum error: page 7"] and engine.marked == fatal
    engine.failing = False
    with pytest.raises(StorageBroken):
        fired(store.update(b"k", lambda rec, _: (rec, None)))


def test_scan_notes_undecodable_records_once_and_indexes_the_rest():
    engine = MemoryEngine()
    engine.apply([(b"good", encode_record(record(1))), (b"bad", b"\xc1\x00")])
    noted = []
    store = Store(engine, "n1", on_corrupt=noted.append)
    seen = []
    store.observe(lambda key, old, new: seen.append(key))
    assert store.scan() == 1 and seen == [b"good"]
    assert store.corrupt_keys == {b"bad"} and noted == [b"bad"]
    fired(defer.maybeDeferred(store.get, b"bad").addErrback(lambda failure: None))
    assert noted == [b"bad"]


def test_meta_epoch_value_must_be_eight_bytes(tmp_path):
    """An epoch that does not unpack is damage, never read as 0 (which would reissue epochs)."""
    data_dir = str(tmp_path / "d")
    engine = BerkeleyEngine(data_dir)
    txn = engine.env.txn_begin()
    engine.meta.put(b"epoch", struct.pack(">I", 9), txn=txn)
    txn.commit()
    incarnation = engine.incarnation
    engine.close()
    again = BerkeleyEngine(data_dir)
    try:
        assert again.recovery is not None and again.incarnation != incarnation
    finally:
        again.close()


# -- undecodable records in the cluster's background work (in-process cluster) --------------------

GARBAGE = b"\xc1 not a record"


def test_a_client_put_on_an_undecodable_record_succeeds_with_a_fresh_actor():
    network, _ = make_cluster()
    coordinator = network.nodes["n1"]
    fired(coordinator.put(b"k", b"before", CausalContext(), 3))
    old_actor = coordinator.store.engine.read(b"k").actor
    coordinator.store.engine.data[b"k"] = GARBAGE
    answer = fired(coordinator.put(b"k", b"after", CausalContext(), 3))
    assert answer.result.outcome is Outcome.OK
    stored = coordinator.store.engine.read(b"k")
    assert stored.actor != old_actor and answer.dot[0] == stored.actor
    # the other replicas merged the new version into what they held: nothing of theirs was lost
    assert sorted(live_values(network.nodes["n2"].store.engine.read(b"k").siblings)) == [b"after", b"before"]


def test_read_repair_replaces_a_local_undecodable_record():
    network, _ = make_cluster()
    fired(network.nodes["n1"].put(b"k", b"v", CausalContext(), 3))
    network.nodes["n1"].store.engine.data[b"k"] = GARBAGE
    result = fired(network.nodes["n1"].get(b"k", 2))
    assert live_values(result.siblings) == [b"v"]
    assert live_values(network.nodes["n1"].store.engine.read(b"k").siblings) == [b"v"]


def test_a_hinted_record_that_does_not_decode_is_dropped_instead_of_handed_off_forever():
    network, clock = make_cluster(size=4)
    coordinator = network.nodes["n4"]
    fired(coordinator.store.update(b"k", lambda rec, _: (Record(siblings=record(1).siblings, hints=frozenset({"n1"})),
                                                         None)))
    assert coordinator.store.hinted == {b"k": frozenset({"n1"})}
    coordinator.store.engine.data[b"k"] = GARBAGE
    service = HandoffService(coordinator, lambda node: True, clock, 1.0)
    service.round()
    assert coordinator.store.hinted == {} and coordinator.store.engine.read_raw(b"k") is None
    assert ("n4", "n1", "put") not in network.sent  # nothing was sent for it


def test_a_tombstone_is_not_reaped_while_an_owner_holds_an_undecodable_record():
    network, clock = make_cluster(size=3)
    reapers = {node: TombstoneReaper(coordinator, clock, interval=1.0, grace=5.0, settled=lambda: True)
               for node, coordinator in network.nodes.items()}
    first = next(key for key in (b"t%d" % i for i in range(100)) if network.nodes["n1"].replicas(key)[0] == "n1")
    fired(network.nodes["n1"].put(first, b"", CausalContext(), 3, deleted=True))
    network.nodes["n2"].store.engine.data[first] = GARBAGE
    for _ in range(3):
        fired(reapers["n1"].consider(first))
        clock.advance(10)
    assert network.nodes["n1"].store.engine.read(first) is not None  # kept; no error either
    assert reapers["n1"].stats["reaped"] == 0


#: A child that opens the engine, writes and flushes N records, and dies as kill -9 would (no close).
CRASH_AFTER_WRITES = """
import json, os, sys
from dynamod.storage.bdb import BerkeleyEngine
engine = BerkeleyEngine(sys.argv[1], sync=True)
for i in range(int(sys.argv[2])):
    engine.apply([(b"k%d" % (i % 20), os.urandom(900))])
    engine.flush()
recovery = engine.recovery or {}
print(json.dumps({"reason": recovery.get("reason"), "keys": sum(1 for _ in engine.keys())}))
sys.stdout.flush()
os._exit(9)
"""


def test_crashing_again_right_after_a_recovery_is_not_mistaken_for_a_damaged_log(tmp_path):
    # Recovery writes a checkpoint; the identity file names it as the durable mark. A second crash
    # before any flushed write must find the log reaching that mark (it did not: the checkpoint was
    # still in the log buffer, and the third open moved the whole store aside, salvaging nothing).
    def run(writes: int) -> dict:
        child = subprocess.run([sys.executable, "-c", CRASH_AFTER_WRITES, str(tmp_path / "data"), str(writes)],
                               capture_output=True, text=True, timeout=120, check=False)
        assert child.stdout, child.stderr[-2000:]
        return json.loads(child.stdout.splitlines()[-1])
    assert run(300)["keys"] == 20
    for _ in range(3):
        reopened = run(0)
        assert reopened == {"reason": None, "keys": 20}
    assert not list((tmp_path / "data").glob("corrupt-*"))
