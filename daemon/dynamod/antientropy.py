"""Active anti-entropy (Dynamo §4.7): replicas of a partition compare Merkle trees and exchange
the versions of the keys they disagree on, with no client reads involved.

The node keeps one tree per partition, updated on every change the store stages (and built by the
store's scan at start), plus the keys of each leaf. Every ``interval`` seconds it takes the next
(partition, other replica) pair of the partitions it replicates, in a fixed rotation that skips
peers that are down, walks the two trees from the root down, only into differing subtrees (one
round trip per level), fetches the other side's records for the differing leaves and merges them
here, and sends its own records for those leaves there. Merging is reconciliation, so the exchange
is safe in both directions and in any order. A wiped or salvaged node (new incarnation) is refilled
this way, pair by pair: ``coverage`` counts the pairs exchanged since start (or the last ring
change), so pairs_total intervals after its peers are up it holds every version they held.

Filling a node (a replacement of a dead node, or the new replicas of a removed node's
partitions): on a ring change (``ring_changed``) the partitions this node newly replicates are
*gained*; exchanges of gained partitions go first, and ``fill`` reports, per gained partition, the
replicas it has been exchanged with. ``filled`` holds once each gained partition has been
exchanged with every other replica that is up: a replacement becomes a member only then.

Records that do not decode are never sent (they are not in the trees; an answer skips them) and
never merged (an incoming one is counted and skipped); a valid version from the peer replaces one
here (``Store.stage``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from msgpack import packb
from twisted.application.internet import TimerService
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from dynamod.coordinator import Coordinator
from dynamod.core.encoding import siblings_to_wire
from dynamod.core.merkle import DEFAULT_DEPTH, MerkleTree, differing_children, leaf_of_hash, record_digest
from dynamod.core.ring import Ring, key_hash, partition_of_hash
from dynamod.core.versions import Record
from dynamod.net.operations import BadRequest
from dynamod.storage.engine import CorruptRecord, decode_stored


@functools.cache
def empty_tree(depth: int) -> MerkleTree:
    """The tree of a partition that holds nothing (shared: it is never updated)."""
    return MerkleTree(depth)


class AntiEntropyService(TimerService):
    """Keeps Merkle trees current and runs one exchange per interval."""

    log = Logger()

    def __init__(self, coordinator: Coordinator, is_up: Callable[[str], bool], clock: IReactorTime,
                 interval: float, depth: int = DEFAULT_DEPTH, admit: Callable[[int], bool] = lambda cost: True):
        super().__init__(interval, self.round)
        self.clock = clock
        self.coordinator = coordinator
        self.is_up = is_up
        self.depth = depth
        self.admit = admit
        self.trees: dict[int, MerkleTree] = {}
        self.leaf_keys: dict[tuple[int, int], set[bytes]] = {}
        #: key -> digest of the sibling set the trees hold for it
        self.digests: dict[bytes, bytes] = {}
        #: partition -> keys held here (what ownership transfers walk)
        self.partition_keys: dict[int, set[bytes]] = {}
        self._cursor = 0
        #: (partition, peer) pairs exchanged in both directions on the ring ``_covered_ring``.
        self._covered: set[tuple[int, str]] = set()
        self._covered_ring: Any = None
        #: Pairs exchanged in the sweep under way, and the sweeps completed (every pair exchanged
        #: once more) since start: a sweep that began after an event proves every replica pair was
        #: reconciled after it (the checker's disk nemesis waits for one before another disk is lost).
        self._sweep: set[tuple[int, str]] = set()
        self._sweeps = 0
        #: When the sweep under way began, and when the last completed one had begun (reactor time).
        self._sweep_began = clock.seconds()
        self._last_sweep_began: float | None = None
        self._running: defer.Deferred | None = None
        #: Gained partition -> the other replicas it has been exchanged with since it was gained.
        self.gained: dict[int, set[str]] = {}
        self.stats = {"exchanges": 0, "partitions_in_sync": 0, "keys_received": 0, "keys_sent": 0,
                      "failed_exchanges": 0, "last_exchange": None}
        coordinator.store.observe(self.observe)
        coordinator.operations.register("aae_hashes", self._answer_hashes)
        coordinator.operations.register("aae_records", self._answer_records)

    # -- trees ---------------------------------------------------------------------------------

    def _tree(self, partition: int) -> MerkleTree:
        tree = self.trees.get(partition)
        if tree is None:
            tree = self.trees[partition] = MerkleTree(self.depth)
        return tree

    def observe(self, key: bytes, old: Record | None, new: Record | None) -> None:
        """A store change: update the key's partition tree and leaf index."""
        old_digest = self.digests.get(key)
        new_digest = record_digest(new.siblings) if new is not None and new.siblings else None
        if old_digest == new_digest:
            return
        hashed = key_hash(key)
        partition = partition_of_hash(hashed, self.coordinator.ring.partitions)
        leaf_index = leaf_of_hash(hashed, self.depth)
        self._tree(partition).update(key, old_digest, new_digest, leaf_index)
        leaf = (partition, leaf_index)
        if new_digest is None:
            self.digests.pop(key, None)
            self.leaf_keys.get(leaf, set()).discard(key)
            self.partition_keys.get(partition, set()).discard(key)
        else:
            self.digests[key] = new_digest
            self.leaf_keys.setdefault(leaf, set()).add(key)
            self.partition_keys.setdefault(partition, set()).add(key)

    # -- answering a peer ----------------------------------------------------------------------

    def _answer_hashes(self, arguments: list) -> dict[int, bytes]:
        """``aae_hashes`` (checked against the ring and the node's tree shape): a partition with
        no tree here is answered from the one shared empty tree, so no request builds a tree."""
        partition, level, indices = arguments
        if level > self.depth:  # the peer limits' depth is the node's; a service may be built shallower
            raise BadRequest(f"aae_hashes: level {level} is past the tree depth {self.depth}")
        return self.trees.get(partition, empty_tree(self.depth)).hashes(level, indices)

    def _answer_records(self, arguments: list) -> list[list[Any]] | defer.Deferred:
        partition, leaves = arguments
        keys = sorted(k for leaf in leaves for k in self.leaf_keys.get((partition, leaf), ()))
        raws = [self.coordinator.store.get_raw(key) for key in keys]

        def pair(found: list[bytes | None]) -> list[list[Any]]:
            return [[key, raw] for key, raw in zip(keys, found, strict=True) if self._sendable(key, raw)]

        if any(isinstance(raw, defer.Deferred) for raw in raws):  # reads on threads (read_threads > 0)
            return defer.gatherResults([defer.maybeDeferred(lambda r=raw: r) for raw in raws]).addCallback(pair)
        return pair(raws)

    def _sendable(self, key: bytes, raw: bytes | None) -> bool:
        """True for a stored record that decodes (one that does not is noted, never sent)."""
        if raw is None:
            return False
        try:
            decode_stored(key, raw)
        except CorruptRecord as exc:
            self.coordinator.store.note_corrupt(key, exc.reason)
            return False
        return True

    # -- exchanging ----------------------------------------------------------------------------

    def my_partitions(self) -> list[int]:
        """Partitions this node is a primary replica of."""
        ring, n, me = self.coordinator.ring, self.coordinator.settings.n, self.coordinator.node_id
        return [p for p in range(ring.partitions) if me in ring.preference_list_for_partition(p, n)]

    def pairs(self) -> list[tuple[int, str]]:
        """Every (partition, other replica) pair of the partitions this node replicates, in the
        order exchanges take them."""
        ring, n, me = self.coordinator.ring, self.coordinator.settings.n, self.coordinator.node_id
        return [(partition, node) for partition in self.my_partitions()
                for node in ring.preference_list_for_partition(partition, n) if node != me]

    def ring_changed(self, before: Ring, after: Ring) -> None:
        """Note the partitions this node replicates on ``after`` but did not on ``before`` (all of
        them when it was alone before: a fresh node that joined), keeping the fill of gained
        partitions it still replicates."""
        n, me = self.coordinator.settings.n, self.coordinator.node_id
        alone = set(before.members) == {me}
        kept: dict[int, set[str]] = {}
        for partition in range(after.partitions):
            replicas = after.preference_list_for_partition(partition, n)
            if me not in replicas:
                continue
            if partition in self.gained:
                kept[partition] = {peer for peer in self.gained[partition] if peer in replicas}
            elif alone or me not in before.preference_list_for_partition(partition, n):
                kept[partition] = set()
        self.gained = kept

    def gain_all(self) -> None:
        """Treat every partition this node replicates as gained (a replacement restarted before
        it was filled: what it had exchanged is not remembered)."""
        self.gained = {partition: set() for partition in self.my_partitions()}

    def _unfilled(self) -> list[tuple[int, str]]:
        """(gained partition, replica up) pairs not exchanged yet, in partition order."""
        ring, n, me = self.coordinator.ring, self.coordinator.settings.n, self.coordinator.node_id
        return [(partition, peer) for partition, done in sorted(self.gained.items())
                for peer in ring.preference_list_for_partition(partition, n)
                if peer != me and peer not in done and self.is_up(peer)]

    def filled(self) -> bool:
        """Every gained partition has been exchanged with each of its other replicas that is up."""
        return not self._unfilled()

    def fill(self) -> dict[str, Any]:
        """Fill progress for /admin/status and /admin/transfers: per gained partition, its other
        replicas and those it has been exchanged with."""
        ring, n, me = self.coordinator.ring, self.coordinator.settings.n, self.coordinator.node_id
        partitions = []
        for partition, done in sorted(self.gained.items()):
            others = [peer for peer in ring.preference_list_for_partition(partition, n) if peer != me]
            waiting = [peer for peer in others if peer not in done and self.is_up(peer)]
            partitions.append({"partition": partition, "replicas": others, "exchanged": sorted(done),
                               "filled": not waiting})
        return {"gained": len(partitions), "filled": sum(1 for p in partitions if p["filled"]),
                "complete": all(p["filled"] for p in partitions), "partitions": partitions}

    def _current_coverage(self) -> set[tuple[int, str]]:
        """The pairs exchanged on the current ring (forgotten when the ring changes)."""
        ownership = tuple(self.coordinator.ring.ownership)
        if ownership != self._covered_ring:
            self._covered_ring, self._covered, self._sweep = ownership, set(), set()
            self._sweep_began = self.clock.seconds()
        return self._covered

    def round(self) -> None:
        """Exchange the next (partition, peer) pair whose peer is up, in rotation, taking pairs not
        yet exchanged in the sweep under way first (a peer back from a failure is covered at once)."""
        if self._running is not None:
            return
        pairs = self.pairs()
        order = [(self._cursor + step) % len(pairs) for step in range(len(pairs))]
        up = [index for index in order if self.is_up(pairs[index][1])]
        if not up or not self.admit(1):
            return
        self._current_coverage()
        unfilled = self._unfilled()
        if unfilled:  # a node being filled exchanges its gained partitions first
            partition, peer = unfilled[0]
        else:
            index = next((i for i in up if pairs[i] not in self._sweep), up[0])
            self._cursor = (index + 1) % len(pairs)
            partition, peer = pairs[index]
        self._running = self.exchange(partition, peer)
        self._running.addBoth(self._finished, partition, peer)

    def _finished(self, result: Any, partition: int, peer: str) -> None:
        self._running = None
        if isinstance(result, int):
            if partition in self.gained:
                self.gained[partition].add(peer)
            self._current_coverage().add((partition, peer))
            self._sweep.add((partition, peer))
            if self._sweep >= set(self.pairs()):
                self._sweeps += 1
                self._sweep = set()
                self._last_sweep_began, self._sweep_began = self._sweep_began, self.clock.seconds()
            self.stats["exchanges"] += 1
            self.stats["last_exchange"] = {"partition": partition, "peer": peer, "keys": result,
                                           "at": round(self.clock.seconds(), 3)}
            if result == 0:
                self.stats["partitions_in_sync"] += 1
        else:
            self.stats["failed_exchanges"] += 1
            self.log.info("anti-entropy with {peer} on partition {partition} failed: {reason}", peer=peer,
                          partition=partition, reason=result.getErrorMessage())

    @defer.inlineCallbacks
    def exchange(self, partition: int, peer: str) -> Any:
        """Reconcile one partition with ``peer``; fires with the number of keys exchanged."""
        call = self.coordinator.peers[peer].call
        timeout = self.coordinator.settings.timeout
        tree = self._tree(partition)
        frontier = [0]
        for level in range(self.depth + 1):
            theirs = yield call("aae_hashes", [partition, level, frontier], timeout)
            mine = tree.hashes(level, frontier)
            if level == self.depth:
                frontier = [leaf for leaf in frontier if mine[leaf] != theirs.get(leaf)]
            else:
                frontier = differing_children(level, mine, theirs)
            if not frontier:
                return 0
        incoming = yield call("aae_records", [partition, frontier], timeout)
        received = 0
        merges = []
        for key, raw in incoming:
            try:
                record = decode_stored(key, raw)
            except CorruptRecord as exc:  # an older peer may still send one: never merged
                self.coordinator.report_corrupt_replica(peer, key, exc.reason)
                continue
            if record is not None:
                received += 1
                merges.append(self.coordinator.store.update(key, self.coordinator.merge_update(record.siblings, None)))
        yield defer.gatherResults(merges, consumeErrors=True)  # "exchanged" only once merged
        sent = 0
        for leaf in frontier:
            for key in sorted(self.leaf_keys.get((partition, leaf), ())):
                try:
                    record = yield self.coordinator.store.get(key)
                except CorruptRecord:
                    continue  # noted by the store; nothing usable to send
                if record is None or not record.siblings:
                    continue
                packed = packb(siblings_to_wire(record.siblings), use_bin_type=True)
                yield call("put", [key, packed, None], timeout)
                sent += 1
        self.stats["keys_received"] += received
        self.stats["keys_sent"] += sent
        return received + sent

    def report(self) -> dict[str, Any]:
        """Progress for /admin/status."""
        pairs = self.pairs()
        covered = self._current_coverage()
        return {**self.stats, "partitions": len(self.my_partitions()),
                "keys": sum(len(keys) for keys in self.leaf_keys.values()),
                "coverage": {"pairs_exchanged": sum(1 for pair in pairs if pair in covered),
                             "pairs_total": len(pairs), "sweeps": self._sweeps,
                             "last_sweep_began_ago": None if self._last_sweep_began is None
                             else round(self.clock.seconds() - self._last_sweep_began, 3)},
                "fill": self.fill()}
