"""Workloads: which ops clients do, on which keys (small key spaces, so writes collide).

* ``cart``: the shopping cart of the Dynamo paper (§4.4) and of Jepsen's 2013 Riak test: clients add
  unique items to a few carts by read-modify-write, remove items they read (read, drop one, write
  with the context; a DELETE with the context when the cart would become empty, so tombstones are
  written, superseded by later adds, and reaped) and sometimes read a cart. Siblings must be merged
  by set union, so no acknowledged item may disappear unless a remove that read it was acknowledged,
  and an acknowledged remove may be undone only by a version concurrent with it (siblings checker).
* ``register``: blind writes of unique values (no context: each supersedes nothing) and reads. In
  vclock mode every acknowledged value must survive as a sibling; in lww mode one value wins.
* ``mixed``: read-modify-write adds and blind writes of unique values on the same keys, and reads.
  A blind write gets a dot from the coordinator's record alone (no context), which is where a dot
  reused after a crash shows (causality's ``reused_dots``); every acknowledged add and write must
  survive (siblings), a blind write may claim nothing (causality's ``over_claimed``), and quorum and
  replicas judge both kinds. vclock mode only: in lww a blind write replaces what it did not see.

All three also write *cold* keys (``<name>-cold-N``): a tenth of the updates are blind writes (a PUT
without a read, so no read repair) to the current cold key, which takes a new one every
``COLD_SPAN`` ops (a few seconds: several writes, with faults between them, each a sibling in
vclock mode) and is never read again before the final reads. When a fault left its replicas apart,
only hinted handoff or anti-entropy can make them converge after the final heal (the convergence
checker says which had to). With ``blind_cold=False`` (lww mode, where a blind write replaces
what it does not know by design) the cart's cold writes are read-modify-write adds instead (after
a cold key's last add, nothing reads it before the end). The cart's cold keys are emptied in the
last ``1 - COLD_FILL`` of their span (removes, then the DELETE that empties them), then left alone:
their tombstones are what the nodes reap during the run.

Elements are numbered by the generator (the op counter), so they are unique and replayable. A
remove's invoke carries ``pick`` (a random int): the client removes ``sorted(items)[pick % len]`` of
what its read returned, so which item goes replays with the seed given the same reads.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import attrs

from dynacheck.generator import Op, mix

WORKLOADS = ("cart", "register", "mixed")
#: Workloads whose every acknowledged write must survive in vclock mode only (blind writes of others).
VCLOCK_ONLY = ("mixed",)


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
#: Share of the cart's hot updates that are removes: a little under the adds, so carts stay small
#: (a remove holds the whole cart in its write) and empty now and then (a DELETE, then a tombstone).
REMOVE_FRACTION = 0.45
#: Share of a cart's cold span (from its start) that adds; the rest removes until the cart is deleted.
COLD_FILL = 0.4
#: Share of the mixed workload's hot updates that are blind writes (the rest are adds).
BLIND_FRACTION = 0.5
PICK_RANGE = 1 << 30


def remove_op(rng: random.Random, key: str) -> Op:
    """A remove of one item of ``key``'s cart, chosen by the client from what its read returns."""
    return {"f": "remove", "key": key, "value": None, "pick": rng.randrange(PICK_RANGE)}


def workload(name: str, key_count: int, read_fraction: float | None = None,
             cold_fraction: float = COLD_FRACTION, blind_cold: bool = True,
             remove_fraction: float = REMOVE_FRACTION) -> Workload:
    """The named workload over ``key_count`` hot keys (and the cold keys it makes up as it goes);
    ``remove_fraction`` is the cart's share of hot updates that remove (0: adds only, and cold
    carts are never emptied)."""
    if name not in WORKLOADS:
        raise ValueError(f"unknown workload {name!r} (choose from {', '.join(WORKLOADS)})")
    keys = keys_for(name, key_count)

    def read(rng: random.Random, n: int) -> Op:
        return {"f": "read", "key": rng.choice(keys), "value": None}

    def update(rng: random.Random, n: int) -> Op:
        key = rng.choice(keys)
        if name == "cart":
            return remove_op(rng, key) if rng.random() < remove_fraction else {"f": "add", "key": key, "value": n}
        if name == "mixed":
            return {"f": "write" if rng.random() < BLIND_FRACTION else "add", "key": key, "value": n}
        return {"f": "write", "key": key, "value": n}

    def cold(rng: random.Random, n: int) -> Op:
        key = f"{name}-cold-{n // COLD_SPAN}"
        if name == "cart" and remove_fraction > 0 and n % COLD_SPAN >= COLD_SPAN * COLD_FILL:
            return remove_op(rng, key)
        f = "write" if blind_cold or name != "cart" else "add"
        return {"f": f, "key": key, "value": n}

    reads = read_fraction if read_fraction is not None else (0.5 if name == "register" else 0.2)
    updates = 1.0 - reads
    return Workload(name=name, keys=keys, make=mix([(updates * (1 - cold_fraction), update),
                                                    (updates * cold_fraction, cold), (reads, read)]))
