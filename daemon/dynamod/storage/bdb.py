"""Berkeley DB engine (the only module that imports bsddb3).

A transactional environment in the node's data dir, opened with recovery, so a crash at any point
leaves exactly the transactions whose log reached the disk. Transactions commit on the event loop
without waiting for the disk (``DB_TXN_NOSYNC``: the log record goes to the in-memory log buffer)
and ``flush`` writes and fsyncs the log on the store's flusher thread: one fsync covers every
transaction committed before it (group commit), and a thread does one blocking call per flush
instead of one per write (when the writer thread ran the whole transactions, each put released and
retook the GIL: ~2,000 context switches/s per node and a fifth of the node's CPU). With
``sync = false`` a commit writes its log record to the operating system at once
(``DB_TXN_WRITE_NOSYNC``) and nothing is fsynced: a process crash loses nothing, a machine crash may
lose the last commits. 8 KiB pages keep 1 KiB values on-page (MEASUREMENTS.md: 6x faster reads
than 4 KiB pages). Handles are opened with DB_THREAD; every transaction begins and commits inside
one ``apply`` call.

Damage (``storage/integrity.py``, ``storage/salvage.py``). Both databases carry page checksums
(``DB_CHKSUM``; files created before this release have none, and Berkeley DB cannot add them). At
open the region files are deleted (damaged ones crash the library), then the environment must pass:
the identity file reads, the log reaches its durable mark, recovery succeeds, meta.db agrees with
the identity file, and a cursor walk reads every record and meta entry through the checksum path
(the verify; ``DB->verify`` cannot be used, see salvage.py). If anything fails, or the ``damaged``
marker of a run-time failure is present, the environment is moved whole into
``DATA_DIR/corrupt-<time>/``, the leaf pages whose checksums verify are salvaged, and a fresh
environment with a new incarnation takes the salvaged records as a replica would (their siblings
reconciled, no actor: the next write of each takes a fresh one). At run time a panic or a page that
fails its checksum raises ``EnvironmentFailed`` (the store stops the node).
"""

from __future__ import annotations

import functools
import os
import struct
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from bsddb3 import db

from dynamod.core.encoding import DecodeError, decode_record, encode_record
from dynamod.core.versions import Record, reconcile
from dynamod.storage import integrity
from dynamod.storage.engine import EnvironmentFailed, StorageEngine, Write, new_incarnation
from dynamod.storage.integrity import Damaged, Identity
from dynamod.storage.salvage import SalvageReport, salvage_btree

_INCARNATION = b"incarnation"
_EPOCH = b"epoch"
# Checkpoint once this much log has accumulated (KiB), so recovery after a crash stays short;
# small, frequent checkpoints stall concurrent writes less than large ones.
_CHECKPOINT_KBYTES = 2048
# Percentage of the cache that background trickle keeps clean, so checkpoints find little to flush.
_TRICKLE_PERCENT = 20
_DEADLOCK_RETRIES = 5
# In-memory log buffer: large enough that commits on the event loop seldom write it out themselves
# (the flusher thread does); Berkeley DB's default for on-disk logs is 32 KiB, and a log file (10
# MiB by default) must hold at least four buffers.
_LOG_BUFFER_BYTES = 1024 * 1024
#: Errors that mean the environment (not one call) is broken: a panic (a page checksum failed,
#: recovery is needed) or a page the tree points to that is not in the file (truncated).
_FATAL = (db.DBRunRecoveryError, db.DBPageNotFoundError, db.DBVerifyBadError)
#: Salvaged records written per transaction while rebuilding.
_SALVAGE_BATCH = 500


def _fatal_as_failed(method: Callable[..., Any]) -> Callable[..., Any]:
    """Turn the library's environment-wide failures into ``EnvironmentFailed``."""
    @functools.wraps(method)
    def wrapper(self: BerkeleyEngine, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except _FATAL as exc:
            raise EnvironmentFailed(f"Berkeley DB environment in {self.data_dir} failed: {exc}") from exc
    return wrapper


class BerkeleyEngine(StorageEngine):
    """Records in a Berkeley DB B-tree inside a transactional environment."""

    def __init__(self, data_dir: str, *, sync: bool = True, cache_mb: int = 64,
                 wall_clock: Callable[[], float] = time.time):
        self.data_dir = data_dir
        self.sync = sync
        self.cache_mb = cache_mb
        self._commit_flags = db.DB_TXN_NOSYNC if sync else db.DB_TXN_WRITE_NOSYNC
        self._identity_lock = threading.Lock()
        self.recovery = None
        os.makedirs(data_dir, exist_ok=True)
        self._lock_fd: int | None = integrity.lock_data_dir(data_dir)
        try:
            integrity.remove_regions(data_dir)
            try:
                marker = integrity.damage_marker(data_dir)
                self._open_checked()
                if marker is not None:
                    raise Damaged(f"the last run stopped on a storage failure: {marker}")
            except (Damaged, db.DBError, OSError) as exc:
                self._abandon()
                self._rebuild(f"{type(exc).__name__}: {exc}", wall_clock())
        except BaseException:
            self._release_lock()
            raise

    # -- opening -------------------------------------------------------------------------------

    def _open_checked(self) -> None:
        """Open the environment and pass every open-time check, or raise (``Damaged``, a DBError)."""
        self.env = self.records = self.meta = None
        stored = integrity.read_identity(self.data_dir)
        if stored is not None and stored.log_mark is not None:
            end = self._log_end()
            if end is None or end < stored.log_mark:
                raise Damaged(f"the log ends at {end}, before its durable mark {stored.log_mark}: "
                              "a log record does not verify")
        self.env = db.DBEnv()
        self.env.set_cachesize(0, self.cache_mb * 1024 * 1024, 1)
        self.env.set_lk_detect(db.DB_LOCK_DEFAULT)
        self.env.set_lg_bsize(_LOG_BUFFER_BYTES)
        self.env.log_set_config(db.DB_LOG_AUTO_REMOVE, 1)
        self.env.open(
            self.data_dir,
            db.DB_CREATE | db.DB_INIT_MPOOL | db.DB_INIT_LOCK | db.DB_INIT_LOG | db.DB_INIT_TXN
            | db.DB_RECOVER | db.DB_THREAD,
            0o600,
        )
        self.records = self._open_db("records.db")
        self.meta = self._open_db("meta.db")
        self.incarnation, self.epoch = self._load_identity(stored)
        self._verify()
        self._write_identity()

    def _log_end(self) -> tuple[int, int] | None:
        """The LSN of the last log record that verifies, read before recovery in a private
        environment (a log cursor stops at the first record that does not verify)."""
        env = db.DBEnv()
        env.open(self.data_dir, db.DB_CREATE | db.DB_INIT_LOG | db.DB_INIT_MPOOL | db.DB_PRIVATE, 0o600)
        try:
            cursor = env.log_cursor()
            last, item = None, cursor.first()
            while item is not None:
                last, item = item[0], cursor.next()
            cursor.close()
            return None if last is None else (int(last[0]), int(last[1]))
        finally:
            env.close()

    def _open_db(self, filename: str):
        handle = db.DB(self.env)
        handle.set_pagesize(8192)
        handle.set_flags(db.DB_CHKSUM)  # every page read is checked; ignored for files made without it
        handle.open(filename, dbtype=db.DB_BTREE,
                    flags=db.DB_CREATE | db.DB_THREAD | db.DB_AUTO_COMMIT | db.DB_READ_UNCOMMITTED, mode=0o600)
        return handle

    def _load_identity(self, stored: Identity | None) -> tuple[str, int]:
        """This data dir's incarnation and epoch reservation, created for an empty dir; raises
        ``Damaged`` when meta.db disagrees with the identity file (a lost commit)."""
        incarnation = self.meta.get(_INCARNATION)
        epoch_raw = self.meta.get(_EPOCH)
        if incarnation is None:
            if stored is not None:
                raise Damaged("meta.db has lost the incarnation the identity file names")
            txn = self.env.txn_begin()
            try:
                incarnation = new_incarnation().encode()
                epoch_raw = struct.pack(">Q", 0)
                self.meta.put(_INCARNATION, incarnation, txn=txn)
                self.meta.put(_EPOCH, epoch_raw, txn=txn)
            except BaseException:
                txn.abort()
                raise
            txn.commit(db.DB_TXN_SYNC)
        if epoch_raw is None or len(epoch_raw) != 8:
            raise Damaged(f"meta.db's epoch reservation is unreadable: {epoch_raw!r}")
        epoch = struct.unpack(">Q", epoch_raw)[0]
        if stored is not None and (stored.incarnation != incarnation.decode(errors="replace")
                                   or epoch < stored.epoch):
            raise Damaged(f"meta.db (incarnation {incarnation!r}, epoch {epoch}) is behind the identity file "
                          f"({stored.incarnation}, {stored.epoch}): a commit was lost")
        return incarnation.decode(), epoch

    def _verify(self) -> None:
        """Read every page that holds a record or meta entry (a cursor walk: the checksum of each
        page is checked as it is read). Free pages are read only when reused, at run time."""
        for handle in (self.meta, self.records):
            cursor = handle.cursor()
            try:
                item = cursor.first()
                while item is not None:
                    item = cursor.next()
            finally:
                cursor.close()

    def _abandon(self) -> None:
        """Drop the handles of an environment that failed (closing a panicked one fails too)."""
        for handle in (getattr(self, "records", None), getattr(self, "meta", None), getattr(self, "env", None)):
            if handle is not None:
                try:
                    handle.close()
                except db.DBError:
                    pass
        self.env = self.records = self.meta = None

    def _rebuild(self, reason: str, now: float) -> None:
        """Move the damaged environment aside, open a fresh one (a new incarnation) and merge in
        what salvage recovers, reconciled per key as a replica's update would be."""
        quarantined = integrity.quarantine(self.data_dir, now)
        report = SalvageReport(checksummed=False)
        found: dict[bytes, Record] = {}
        undecodable = 0
        records_file = os.path.join(quarantined, "records.db")
        if os.path.exists(records_file):
            try:
                for key, raw in salvage_btree(records_file, report):
                    try:
                        record = decode_record(raw)
                    except DecodeError:
                        undecodable += 1
                        continue
                    held = found.get(key)
                    if held is not None:
                        record = Record(siblings=reconcile(held.siblings, record.siblings),
                                        hints=held.hints | record.hints)
                    found[key] = Record(siblings=record.siblings, hints=record.hints)
            except OSError:
                pass  # nothing readable: anti-entropy refills everything
        self._open_checked()
        items = sorted(found.items())
        for start in range(0, len(items), _SALVAGE_BATCH):
            self.apply([(key, encode_record(record)) for key, record in items[start:start + _SALVAGE_BATCH]])
        self.env.log_flush()
        self.recovery = {"quarantined": quarantined, "reason": reason, "salvaged_keys": len(items),
                         "undecodable": undecodable, "pages": report.pages, "bad_pages": report.bad_pages,
                         "checksummed": report.checksummed}

    def _write_identity(self) -> None:
        """Record incarnation, epoch reservation and the last durable checkpoint beside the env."""
        with self._identity_lock:
            # The mark must be durable before the identity file names it: a checkpoint's record may
            # still be in the in-memory log buffer (recovery's own checkpoint is), and a crash would
            # then leave a log that ends before its mark, which the next start takes for damage.
            self.env.log_flush()
            last = self.env.txn_stat().get("last_ckp")
            mark = (int(last[0]), int(last[1])) if last and last[0] > 0 else None
            integrity.write_identity(self.data_dir, Identity(self.incarnation, self.epoch, mark))

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # -- the engine ----------------------------------------------------------------------------

    @_fatal_as_failed
    def read_raw(self, key: bytes) -> bytes | None:
        for attempt in range(_DEADLOCK_RETRIES):
            try:
                # Reads take no locks: a read may see a version whose flush is still running, i.e.
                # not yet acknowledged.
                return self.records.get(key, flags=db.DB_READ_UNCOMMITTED)
            except db.DBLockDeadlockError:
                if attempt == _DEADLOCK_RETRIES - 1:
                    raise
        return None

    @_fatal_as_failed
    def apply(self, writes: list[Write]) -> None:
        txn = self.env.txn_begin()
        try:
            for key, raw in writes:
                if raw is None:
                    try:
                        self.records.delete(key, txn=txn)
                    except db.DBNotFoundError:
                        pass
                else:
                    self.records.put(key, raw, txn=txn)
        except BaseException:
            txn.abort()
            raise
        txn.commit(self._commit_flags)

    @_fatal_as_failed
    def flush(self) -> None:
        if self.sync:
            self.env.log_flush()

    @_fatal_as_failed
    def reserve_epochs(self, epoch: int) -> None:
        if epoch <= self.epoch:
            return
        txn = self.env.txn_begin()
        try:
            self.meta.put(_EPOCH, struct.pack(">Q", epoch), txn=txn)
        except BaseException:
            txn.abort()
            raise
        txn.commit(db.DB_TXN_SYNC)  # even with sync = false: epochs must never be handed out twice
        self.epoch = epoch
        self._write_identity()  # after meta.db: an identity file ahead of meta.db means a lost commit

    @_fatal_as_failed
    def maintain(self) -> None:
        """Checkpoint when enough log has accumulated, so recovery stays short and old log files
        can be removed (each call touches the log directory: not for every commit). Berkeley DB
        checkpoints while transactions go on."""
        self.env.memp_trickle(_TRICKLE_PERCENT)
        before = self.env.txn_stat().get("last_ckp")
        self.env.txn_checkpoint(_CHECKPOINT_KBYTES, 0)
        if self.env.txn_stat().get("last_ckp") != before:
            self._write_identity()  # the log up to this checkpoint must be there at the next open

    def keys(self) -> Iterator[bytes]:
        for key, _ in self.items():
            yield key

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        cursor = self.records.cursor()
        try:
            item = cursor.first()
            while item is not None:
                yield item
                item = cursor.next()
        except _FATAL as exc:
            raise EnvironmentFailed(f"Berkeley DB environment in {self.data_dir} failed: {exc}") from exc
        finally:
            cursor.close()

    def mark_damaged(self, reason: str) -> None:
        integrity.mark_damaged(self.data_dir, reason)

    def close(self) -> None:
        try:
            self.env.txn_checkpoint(0, 0)
            self._write_identity()
            self.records.close()
            self.meta.close()
            self.env.close()
        finally:
            self._release_lock()
