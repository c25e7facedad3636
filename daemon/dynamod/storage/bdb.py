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

"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator

from bsddb3 import db

from dynamod.storage.engine import StorageEngine, Write, new_incarnation

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


class BerkeleyEngine(StorageEngine):
    """Records in a Berkeley DB B-tree inside a transactional environment."""

    def __init__(self, data_dir: str, *, sync: bool = True, cache_mb: int = 64):
        self.data_dir = data_dir
        self.sync = sync
        self._commit_flags = db.DB_TXN_NOSYNC if sync else db.DB_TXN_WRITE_NOSYNC
        os.makedirs(data_dir, exist_ok=True)
        self.env = db.DBEnv()
        self.env.set_cachesize(0, cache_mb * 1024 * 1024, 1)
        self.env.set_lk_detect(db.DB_LOCK_DEFAULT)
        self.env.set_lg_bsize(_LOG_BUFFER_BYTES)
        self.env.log_set_config(db.DB_LOG_AUTO_REMOVE, 1)
        self.env.open(
            data_dir,
            db.DB_CREATE | db.DB_INIT_MPOOL | db.DB_INIT_LOCK | db.DB_INIT_LOG | db.DB_INIT_TXN
            | db.DB_RECOVER | db.DB_THREAD,
            0o600,
        )
        self.records = self._open_db("records.db")
        self.meta = self._open_db("meta.db")
        self.incarnation, self.epoch = self._load_identity()

    def _open_db(self, filename: str):
        handle = db.DB(self.env)
        handle.set_pagesize(8192)
        handle.open(filename, dbtype=db.DB_BTREE,
                    flags=db.DB_CREATE | db.DB_THREAD | db.DB_AUTO_COMMIT | db.DB_READ_UNCOMMITTED, mode=0o600)
        return handle

    def _load_identity(self) -> tuple[str, int]:
        """Read this data dir's incarnation, creating a fresh one for an empty dir."""
        incarnation = self.meta.get(_INCARNATION)
        if incarnation is None:
            txn = self.env.txn_begin()
            try:
                fresh = new_incarnation().encode()
                self.meta.put(_INCARNATION, fresh, txn=txn)
                self.meta.put(_EPOCH, struct.pack(">Q", 0), txn=txn)
            except BaseException:
                txn.abort()
                raise
            txn.commit()
            incarnation = fresh
        epoch_raw = self.meta.get(_EPOCH)
        epoch = struct.unpack(">Q", epoch_raw)[0] if epoch_raw else 0
        return incarnation.decode(), epoch

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

    def flush(self) -> None:
        if self.sync:
            self.env.log_flush()

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

    def maintain(self) -> None:
        """Checkpoint when enough log has accumulated, so recovery stays short and old log files
        can be removed (each call touches the log directory: not for every commit). Berkeley DB
        checkpoints while transactions go on."""
        self.env.memp_trickle(_TRICKLE_PERCENT)
        self.env.txn_checkpoint(_CHECKPOINT_KBYTES, 0)

    def keys(self) -> Iterator[bytes]:
        cursor = self.records.cursor()
        try:
            item = cursor.first()
            while item is not None:
                yield item[0]
                item = cursor.next()
        finally:
            cursor.close()

    def close(self) -> None:
        self.env.txn_checkpoint(0, 0)
        self.records.close()
        self.meta.close()
        self.env.close()
