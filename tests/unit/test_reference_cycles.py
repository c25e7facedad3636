"""The request path frees what it allocates by reference counting: a reference cycle per request
is left for the cyclic garbage collector, whose young collections then paused a loaded node for
5-20 ms each, every few hundred requests (most of the half-peak tail in ``make bench``)."""

from __future__ import annotations

import gc
from collections import Counter

import pytest

from dynamod.core.versions import CausalContext
from tests.sim import fired, make_cluster


def garbage_of(action) -> Counter:
    """What ``action`` left in reference cycles, by type (functions by name)."""
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        action()
        gc.collect()
        found = Counter(getattr(item, "__qualname__", type(item).__name__) if callable(item) else type(item).__name__
                        for item in gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        if enabled:
            gc.enable()
    return found


@pytest.mark.parametrize("down", [set(), {"n3"}], ids=["all up", "a replica down (fallover)"])
def test_puts_gets_and_forwards_leave_no_reference_cycle(down):
    network, _ = make_cluster(size=5)
    for i in range(20):  # warm: lazily built caches are not garbage
        fired(network.nodes["n1"].put(b"warm-%d" % i, b"v", CausalContext(), 2))
    network.down.update(down)

    def requests() -> None:
        for i in range(50):
            for node in ("n1", "n4"):  # n4 forwards the PUTs of keys it holds no replica of
                fired(network.nodes[node].put(b"k%d" % i, b"v", CausalContext(), 2))
                fired(network.nodes[node].get(b"k%d" % i, 2))

    assert garbage_of(requests) == Counter()
