"""Open-time verify cost of the Berkeley DB engine, in alternating pairs: open with and without the
verify walk, the walk alone, and the start-up scan for comparison.

Usage: ``.venv/bin/python scripts/measure_storage_verify.py [RECORDS] [DIR]`` (default 50,000 records
of 1 KiB in /tmp/dynamod-verify-measure, built once); prints milliseconds and milliseconds per MiB.
"""

from __future__ import annotations

import os
import statistics
import sys
import time

from dynamod.core.encoding import encode_record
from dynamod.core.versions import CausalContext, Record, Sibling
from dynamod.storage.bdb import BerkeleyEngine
from dynamod.storage.store import Store


def build(data_dir: str, count: int) -> None:
    engine = BerkeleyEngine(data_dir, sync=False)
    for start in range(0, count, 100):
        engine.apply([(b"key-%08d" % i, encode_record(Record(siblings=(
            Sibling(dot=("n1~ab.1", i + 1), past=CausalContext(), value=os.urandom(1024)),))))
            for i in range(start, start + 100)])
    engine.close()


def timed(fn) -> tuple[float, object]:
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 50_000
    data_dir = sys.argv[2] if len(sys.argv) > 2 else "/tmp/dynamod-verify-measure"
    if not os.path.exists(os.path.join(data_dir, "records.db")):
        build(data_dir, count)
    mib = os.path.getsize(os.path.join(data_dir, "records.db")) / 2**20
    verify = BerkeleyEngine._verify
    opens: dict[str, list[float]] = {"with": [], "without": []}
    walks, scans = [], []
    for _ in range(4):
        for mode in ("with", "without"):
            BerkeleyEngine._verify = verify if mode == "with" else (lambda self: None)
            seconds, engine = timed(lambda: BerkeleyEngine(data_dir))
            opens[mode].append(seconds)
            if mode == "with":
                walks.append(timed(lambda engine=engine: verify(engine))[0])
                scans.append(timed(lambda engine=engine: Store(engine, "n1").scan())[0])
            engine.close()
    BerkeleyEngine._verify = verify
    with_ms, without_ms = (statistics.median(opens[m]) * 1000 for m in ("with", "without"))
    walk_ms, scan_ms = statistics.median(walks) * 1000, statistics.median(scans) * 1000
    print(f"records.db {mib:.1f} MiB ({count} records): open with verify {with_ms:.0f} ms, without "
          f"{without_ms:.0f} ms = {(with_ms - without_ms) / mib:.1f} ms/MiB (median of 4 alternating pairs); "
          f"a second walk (cache warm) {walk_ms:.0f} ms; Store.scan {scan_ms:.0f} ms = {scan_ms / mib:.1f} ms/MiB")


if __name__ == "__main__":
    main()
