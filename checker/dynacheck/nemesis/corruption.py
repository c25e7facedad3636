"""File corruption on a node's host (run there while the node is down, as
``python -m dynacheck.nemesis.corruption DATA_DIR --target T --mode M --flips K --seed S``).

``choose`` is pure: from the seed and the files present it picks the file and what to do to it
(bit flips at random offsets, or a truncation to a random length); ``apply`` does it and fsyncs.
Targets: ``records`` (records.db), ``meta`` (meta.db: the incarnation and epochs), ``log`` (a
Berkeley DB log file), ``any`` (any of those, or a region file ``__db.*``).
Prints one JSON line saying what it did; exit 0 also when the target file does not exist (nothing
to corrupt: the line says so).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from pathlib import Path
from typing import Any

#: The Berkeley DB environment's files (the node's own identity and cluster-state files are not
#: Berkeley DB's: a real disk could hit them too, but the node's answer to that is to refuse to start).
TARGET_PATTERNS = {"records": ("records.db",), "meta": ("meta.db",), "log": ("log.",),
                   "any": ("records.db", "meta.db", "log.", "__db.")}


def candidates(files: dict[str, int], target: str) -> list[str]:
    """The files (name -> size) a ``target`` may hit, non-empty ones only, in a stable order."""
    prefixes = TARGET_PATTERNS[target]
    return sorted(name for name, size in files.items() if size > 0 and any(name.startswith(p) for p in prefixes))


def choose(files: dict[str, int], target: str, mode: str, flips: int, rng: random.Random) -> dict[str, Any]:
    """What to do (pure): ``{"file", "mode", "offsets"|"length"}``, or ``{"file": None}`` when no
    file matches."""
    names = candidates(files, target)
    if not names:
        return {"file": None, "mode": mode}
    name = rng.choice(names)
    size = files[name]
    if mode == "truncate":
        return {"file": name, "mode": mode, "length": rng.randrange(size)}
    return {"file": name, "mode": mode, "offsets": sorted({(rng.randrange(size), rng.randrange(8))
                                                            for _ in range(flips)})}


def apply(directory: Path, action: dict[str, Any]) -> None:
    """Do ``action`` to its file under ``directory`` and fsync it."""
    path = directory / action["file"]
    with path.open("r+b") as handle:
        if action["mode"] == "truncate":
            handle.truncate(action["length"])
        else:
            for offset, bit in action["offsets"]:
                handle.seek(offset)
                byte = handle.read(1)
                handle.seek(offset)
                handle.write(bytes([byte[0] ^ (1 << bit)]))
        handle.flush()
        os.fsync(handle.fileno())


def files_of(directory: Path) -> dict[str, int]:
    return {entry.name: entry.stat().st_size for entry in directory.iterdir() if entry.is_file()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--target", choices=sorted(TARGET_PATTERNS), default="any")
    parser.add_argument("--mode", choices=("bitflip", "truncate"), default="bitflip")
    parser.add_argument("--flips", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    options = parser.parse_args(argv)
    if not options.data_dir.is_dir():
        print(f"corruption: {options.data_dir} is not a directory", file=sys.stderr)
        return 2
    action = choose(files_of(options.data_dir), options.target, options.mode, options.flips,
                    random.Random(options.seed))
    if action["file"] is not None:
        apply(options.data_dir, action)
    print(json.dumps(action))
    return 0


if __name__ == "__main__":
    sys.exit(main())
