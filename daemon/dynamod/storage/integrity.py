"""What the Berkeley DB engine keeps beside its environment to notice damage, and how a damaged
environment is moved aside.

* ``identity.json``: the incarnation, the highest reserved actor epoch and a *log mark* (the LSN of
  the last checkpoint known durable), with a CRC. Berkeley DB's recovery reads the log up to the
  first record that does not verify and takes that for the end (a torn tail after a crash looks the
  same), so a damaged log silently rolls committed transactions back, an epoch reservation among
  them: measured, a flipped byte mid-log took meta.db's epoch from 99 back to 1, and the node would
  have issued epochs 2..99 again (kv679). The file is written (fsync, rename) after every epoch
  reservation and checkpoint; at open the log must reach the mark and meta.db must agree with it.
* ``damaged``: written when the engine fails at run time (a checksum failure panics the
  environment), so the next start moves the environment aside even if its checks would pass (a
  damaged free page is only read when it is reused).
* ``corrupt-<UTC time>/``: where a damaged environment goes, whole (never deleted).
"""

from __future__ import annotations

import fcntl
import json
import os
import time
import zlib
from typing import Any

import attrs

IDENTITY_FILE = "identity.json"
DAMAGED_MARKER = "damaged"
LOCK_FILE = "dynamod.lock"
QUARANTINE_PREFIX = "corrupt-"
#: The environment's own files (region files included), moved aside together.
_ENVIRONMENT_FILES = ("records.db", "meta.db", IDENTITY_FILE, DAMAGED_MARKER)
_ENVIRONMENT_PREFIXES = ("log.", "__db.")

LogMark = tuple[int, int]


class Damaged(Exception):
    """The environment failed an open-time check; the message says which."""


@attrs.frozen
class Identity:
    """The node identity kept beside the environment (see the module docstring)."""

    incarnation: str
    epoch: int
    log_mark: LogMark | None = None


def _checksummed(fields: dict[str, Any]) -> int:
    return zlib.crc32(json.dumps(fields, sort_keys=True).encode())


def read_identity(data_dir: str) -> Identity | None:
    """The stored identity, None when there is no file; raises ``Damaged`` when it is unreadable."""
    path = os.path.join(data_dir, IDENTITY_FILE)
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except FileNotFoundError:
        return None
    try:
        document = json.loads(raw)
        crc = document.pop("crc32")
        if crc != _checksummed(document):
            raise ValueError("CRC mismatch")
        mark = document["log_mark"]
        return Identity(str(document["incarnation"]), int(document["epoch"]),
                        (int(mark[0]), int(mark[1])) if mark is not None else None)
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        raise Damaged(f"{IDENTITY_FILE} is damaged ({exc})") from exc


def write_identity(data_dir: str, identity: Identity) -> None:
    """Replace the identity file atomically and durably (write, fsync, rename, fsync the dir)."""
    fields = {"incarnation": identity.incarnation, "epoch": identity.epoch,
              "log_mark": list(identity.log_mark) if identity.log_mark is not None else None}
    path = os.path.join(data_dir, IDENTITY_FILE)
    temporary = path + ".tmp"
    with open(temporary, "wb") as handle:
        handle.write(json.dumps({**fields, "crc32": _checksummed(fields)}, sort_keys=True).encode())
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    _fsync_dir(data_dir)


def mark_damaged(data_dir: str, reason: str) -> None:
    """Leave the ``damaged`` marker (durably) for the next open."""
    with open(os.path.join(data_dir, DAMAGED_MARKER), "w", encoding="utf-8") as handle:
        handle.write(reason + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    _fsync_dir(data_dir)


def damage_marker(data_dir: str) -> str | None:
    """The reason left by ``mark_damaged``, or None."""
    try:
        with open(os.path.join(data_dir, DAMAGED_MARKER), encoding="utf-8", errors="replace") as handle:
            return handle.read().strip() or "no reason recorded"
    except FileNotFoundError:
        return None


def environment_files(data_dir: str) -> list[str]:
    """The names of the environment's files present in ``data_dir``."""
    return sorted(name for name in os.listdir(data_dir)
                  if name in _ENVIRONMENT_FILES or name.startswith(_ENVIRONMENT_PREFIXES))


def remove_regions(data_dir: str) -> None:
    """Delete the region files (``__db.*``): they hold no durable state (recovery rebuilds them),
    and joining damaged ones crashes the library (measured: a segmentation fault in env.open).
    Safe because the data dir is locked (``lock_data_dir``): no other process uses them."""
    for name in os.listdir(data_dir):
        if name.startswith("__db."):
            os.unlink(os.path.join(data_dir, name))


def quarantine(data_dir: str, now: float) -> str:
    """Move the environment's files into a new ``corrupt-<UTC time>`` directory; returns its path."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    target, suffix = os.path.join(data_dir, QUARANTINE_PREFIX + stamp), 1
    while os.path.exists(target):
        suffix += 1
        target = os.path.join(data_dir, f"{QUARANTINE_PREFIX}{stamp}-{suffix}")
    os.mkdir(target, 0o700)
    for name in environment_files(data_dir):
        os.replace(os.path.join(data_dir, name), os.path.join(target, name))
    _fsync_dir(target)
    _fsync_dir(data_dir)
    return target


def lock_data_dir(data_dir: str) -> int:
    """Hold an exclusive lock on the data dir for this process's life (released on close or exit);
    raises ``RuntimeError`` when another process holds it."""
    fd = os.open(os.path.join(data_dir, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        os.close(fd)
        raise RuntimeError(f"{data_dir} is in use by another process") from exc
    return fd


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
