"""Workloads: which ops clients do, on which keys (small key spaces, so writes collide).

* ``cart``: the shopping cart of the Dynamo paper (§4.4) and of Jepsen's 2013 Riak test: clients add
  unique items to a few carts by read-modify-write and sometimes read a cart. Siblings must be
  merged by set union, so no acknowledged item may ever disappear.
* ``register``: blind writes of unique values (no context: each supersedes nothing) and reads. In
  vclock mode every acknowledged value must survive as a sibling; in lww mode one value wins.

Both also write *cold* keys (``cart-cold-N``): a tenth of the updates are blind writes (a PUT
without a read, so no read repair) to the current cold key, which takes a new one every
``COLD_SPAN`` ops (a few seconds: several writes, with faults between them, each a sibling in
vclock mode) and is never read again before the final reads. When a fault left its replicas apart,
only hinted handoff or anti-entropy can make them converge after the final heal (the convergence
checker says which had to). With ``blind_cold=False`` (lww mode, where a blind write replaces
what it does not know by design) the cart's cold writes are read-modify-write adds instead (after
a cold key's last add, nothing reads it before the end).

Elements are numbered by the generator (the op counter), so they are unique and replayable.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import attrs

from dynacheck.generator import Op, mix

WORKLOADS = ("cart", "register")


@attrs.frozen
class Workload:
    """A workload's name, keys and op maker."""

    name: str
    keys: tuple[str, ...]
    make: Callable[[random.Random, int], Op]

    def final_reads(self, keys: list[str], nodes: list[str]) -> list[Op]:
        """One read of each of ``keys`` (the hot keys and every cold key written) through every node,
        once the cluster has healed and converged."""
        return [{"f": "read", "key": key, "value": None, "node": node, "final": True}
                for key in keys for node in nodes]


def keys_for(name: str, count: int) -> tuple[str, ...]:
    """``cart-0``, ``cart-1``... (a key space of ``count`` keys)."""
    return tuple(f"{name}-{index}" for index in range(count))


#: Share of the updates that go to cold keys, and how many ops (of every kind) a cold key lasts.
COLD_FRACTION = 0.1
COLD_SPAN = 200


def workload(name: str, key_count: int, read_fraction: float | None = None,
             cold_fraction: float = COLD_FRACTION, blind_cold: bool = True) -> Workload:
    """The named workload over ``key_count`` hot keys (and the cold keys it makes up as it goes)."""
    if name not in WORKLOADS:
        raise ValueError(f"unknown workload {name!r} (choose from {', '.join(WORKLOADS)})")
    keys = keys_for(name, key_count)

    def read(rng: random.Random, n: int) -> Op:
        return {"f": "read", "key": rng.choice(keys), "value": None}

    def update(rng: random.Random, n: int) -> Op:
        return {"f": "add" if name == "cart" else "write", "key": rng.choice(keys), "value": n}

    def cold(rng: random.Random, n: int) -> Op:
        f = "write" if blind_cold or name != "cart" else "add"
        return {"f": f, "key": f"{name}-cold-{n // COLD_SPAN}", "value": n}

    reads = read_fraction if read_fraction is not None else (0.2 if name == "cart" else 0.5)
    updates = 1.0 - reads
    return Workload(name=name, keys=keys, make=mix([(updates * (1 - cold_fraction), update),
                                                    (updates * cold_fraction, cold), (reads, read)]))
