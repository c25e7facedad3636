"""Salvage of a damaged Berkeley DB B-tree file: every key/value pair on a leaf page whose page
checksum verifies, read straight from the file without the library.

bsddb3 6.2.9's ``DB.verify`` (and so ``DB_SALVAGE``) closes its handle before calling the library's
verify, which then verifies nothing and reports success for any file, a text file included; and a
cursor walk stops at the first damaged page, because a checksum failure panics the environment. So
this module reads the file page by page in Berkeley DB 5.3's on-disk format (``dbinc/db_page.h``):
a page whose checksum (``__ham_func4`` over the page with the checksum field zeroed: ``h = h * 33 +
byte``) does not match is skipped, the others are parsed, and overflow items are followed through
their chains, each page of which must verify too. Pages of a file created without checksums
(before the node enabled them) are taken as they parse: only the record codec can reject them.
"""

from __future__ import annotations

import operator
import struct
from collections.abc import Iterator

import attrs

#: Page types (db_page.h).
P_INVALID, P_IBTREE, P_LBTREE, P_OVERFLOW, P_BTREEMETA = 0, 3, 5, 7, 9
#: Item types on a leaf; B_DELETE marks a deleted item.
B_KEYDATA, B_OVERFLOW, B_DELETE = 1, 3, 0x80
#: DBMETA.metaflags bit: the file's pages carry checksums.
DBMETA_CHKSUM = 0x01
#: Where the meta page keeps its checksum, and how much of the page it covers (DBMETASIZE).
META_CHECKSUM_AT, META_SIZE = 492, 512
#: A non-meta page: 26 bytes of header, then PG_CHKSUM (2 unused bytes, 4 of checksum).
PAGE_HEADER, PAGE_CHECKSUM_AT = 26, 28
BTREE_MAGIC = 0x053162
DEFAULT_PAGESIZE = 8192
_MASK = 0xFFFFFFFF


@attrs.define
class SalvageReport:
    """What a salvage found: pages read, skipped for a bad checksum or an unparsable layout, pairs taken."""

    pages: int = 0
    bad_pages: int = 0
    pairs: int = 0
    checksummed: bool = True


class _Checksum:
    """Berkeley DB's ``__ham_func4`` (``h = h * 33 + byte`` mod 2**32) as one weighted sum per page."""

    def __init__(self, length: int):
        weights = [1] * length
        for i in range(length - 2, -1, -1):
            weights[i] = (weights[i + 1] * 33) & _MASK
        self.weights = weights

    def of(self, data: bytes) -> int:
        return sum(map(operator.mul, data, self.weights)) & _MASK


def _verifies(page: bytes, at: int, checksum: _Checksum, length: int) -> bool:
    stored = struct.unpack_from("<I", page, at)[0]
    zeroed = page[:at] + b"\0\0\0\0" + page[at + 4:length]
    return checksum.of(zeroed) == stored


def salvage_btree(path: str, report: SalvageReport | None = None) -> Iterator[tuple[bytes, bytes]]:
    """Yield ``(key, value)`` from every leaf page of the B-tree file at ``path`` that verifies
    (in page order, so a key may come more than once: the caller reconciles)."""
    report = report if report is not None else SalvageReport()
    with open(path, "rb") as handle:
        data = handle.read()
    pagesize, checksummed = DEFAULT_PAGESIZE, True
    meta = data[:META_SIZE]
    if len(meta) == META_SIZE and struct.unpack_from("<I", meta, 12)[0] == BTREE_MAGIC:
        meta_ok = _verifies(meta, META_CHECKSUM_AT, _Checksum(META_SIZE), META_SIZE) \
            if meta[26] & DBMETA_CHKSUM else True
        declared = struct.unpack_from("<I", meta, 20)[0]
        if meta_ok and declared in (512, 1024, 2048, 4096, 8192, 16384, 32768, 65536):
            pagesize, checksummed = declared, bool(meta[26] & DBMETA_CHKSUM)
    # A damaged meta page: assume the node's own settings (8 KiB pages, checksums on).
    report.checksummed = checksummed
    checksum = _Checksum(pagesize)
    overhead = PAGE_HEADER + 6 if checksummed else PAGE_HEADER
    pages = len(data) // pagesize

    bad: set[int] = set()
    for pgno in range(1, pages):
        page = data[pgno * pagesize:(pgno + 1) * pagesize]
        if page[25] == P_INVALID and not any(page[:12]):
            continue  # a file hole, or a page allocated but never written
        report.pages += 1
        if checksummed and not _verifies(page, PAGE_CHECKSUM_AT, checksum, pagesize):
            bad.add(pgno)
    report.bad_pages = len(bad)

    def page_at(pgno: int) -> bytes | None:
        if not 0 < pgno < pages or pgno in bad:
            return None
        return data[pgno * pagesize:(pgno + 1) * pagesize]

    def overflow(pgno: int, length: int) -> bytes | None:
        parts, seen = [], set()
        while pgno and pgno not in seen and sum(map(len, parts)) < length:
            seen.add(pgno)
            page = page_at(pgno)
            if page is None or page[25] != P_OVERFLOW:
                return None
            used = struct.unpack_from("<H", page, 22)[0]
            parts.append(page[overhead:overhead + used])
            pgno = struct.unpack_from("<I", page, 16)[0]
        joined = b"".join(parts)
        return joined[:length] if len(joined) >= length else None

    def item(page: bytes, offset: int) -> bytes | None:
        if offset + 3 > pagesize:
            return None
        kind = page[offset + 2]
        if kind & B_DELETE:
            return None
        if kind == B_KEYDATA:
            length = struct.unpack_from("<H", page, offset)[0]
            end = offset + 3 + length
            return page[offset + 3:end] if end <= pagesize else None
        if kind == B_OVERFLOW and offset + 12 <= pagesize:
            pgno, length = struct.unpack_from("<II", page, offset + 4)
            return overflow(pgno, length)
        return None

    for pgno in range(1, pages):
        page = page_at(pgno)
        if page is None or page[25] != P_LBTREE:
            continue
        entries = struct.unpack_from("<H", page, 20)[0]
        if overhead + 2 * entries > pagesize:
            report.bad_pages += 1
            continue
        offsets = struct.unpack_from(f"<{entries}H", page, overhead)
        for i in range(0, entries - 1, 2):
            key, value = item(page, offsets[i]), item(page, offsets[i + 1])
            if key is not None and value is not None:
                report.pairs += 1
                yield key, value
