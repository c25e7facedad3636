"""The graphs checker: version-graph pictures for the keys worth a look."""

from __future__ import annotations

import networkx as nx

from dynacheck.checkers import check_all, graphs
from dynacheck.checkers.causality import KeyVersions, analyse
from dynacheck.synthetic import HistoryBuilder, generate, version

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TEST = {"workload": "cart", "n": 3, "nodes": ["n1", "n2", "n3"]}


def anomalous_history() -> list:
    """Key ``cart/1`` loses an acknowledged sibling during a partition; ``fine`` is a clean chain."""
    h = HistoryBuilder()
    h.nemesis("start-partition", 0, 1)
    h.add(0, "cart/1", 1, 2, 4, dot=("a", 1))
    h.add(1, "cart/1", 2, 3, 5, dot=("b", 1))
    h.add(0, "cart/1", 3, 6, 8, dot=("a", 2), seen=[("a", 1)], supersedes=[("a", 1)])
    h.nemesis("stop-partition", 10, 11)
    h.add(2, "fine", 4, 12, 14, dot=("a", 1))
    for i, node in enumerate(("n1", "n2", "n3")):
        h.read(10 + i, "cart/1", [1, 3], 20 + i, 20.5 + i, final=True, node=node,
               versions=[version(("a", 2), [1, 3], seen=[("a", 1)])])
        h.read(10 + i, "fine", [4], 30 + i, 30.5 + i, final=True, node=node, versions=[version(("a", 1), [4])])
    return h.history()


def test_without_a_run_directory_nothing_is_drawn():
    assert graphs.check(TEST, anomalous_history(), None) == {"valid": True, "files": [], "keys": []}


def test_the_anomalous_key_is_drawn_first_as_a_png(tmp_path):
    result = graphs.check(TEST, anomalous_history(), tmp_path)
    assert result["valid"] is True
    assert result["keys"] == ["cart/1", "fine"]
    assert result["files"] == ["graphs/cart_1.png", "graphs/fine.png"]
    for name in result["files"]:
        assert (tmp_path / name).read_bytes().startswith(PNG_MAGIC)


def test_key_names_become_safe_file_names():
    assert graphs.safe_name("cart/1") == "cart_1"
    assert graphs.safe_name("../../etc") == "etc"
    assert graphs.safe_name("ключ") == "key"


def test_concurrent_siblings_get_their_own_lane_and_a_merge_closes_it():
    graph = nx.DiGraph([("a/1", "a/2"), ("a/1", "b/1"), ("a/2", "a/3"), ("b/1", "a/3")])
    lanes = graphs.lanes(graph, ["a/1", "a/2", "b/1", "a/3"])
    assert lanes["a/1"] == lanes["a/2"] == lanes["a/3"] == 0
    assert lanes["b/1"] == 1
    blind = nx.DiGraph()
    blind.add_nodes_from(["a/1", "b/1", "c/1"])  # register blind writes: no edges, one lane
    assert set(graphs.lanes(blind, ["a/1", "b/1", "c/1"]).values()) == {0}


def test_big_graphs_are_truncated_to_the_last_versions(tmp_path):
    h = HistoryBuilder()
    h.add(0, "long", 0, 0, 1, dot=("a", 1))
    for counter in range(2, 400):
        h.add(0, "long", counter, counter * 2, counter * 2 + 1, dot=("a", counter), seen=[("a", counter - 1)],
              supersedes=[("a", counter - 1)])
    h.read(1, "long", [], 1000, 1001, final=True, versions=[version(("a", 399), [], seen=[("a", 398)])])
    result = graphs.check(TEST, h.history(), tmp_path)
    assert result["files"] == ["graphs/long.png"]
    assert (tmp_path / "graphs/long.png").stat().st_size > 1000


def test_every_checker_of_mine_passes_a_simulated_run_and_draws_it(tmp_path):
    test, history = generate(1_500, seed=5, active_keys=4, key_limit=80)
    names = ("siblings", "convergence", "causality", "graphs")
    result = check_all(test, history, tmp_path, names=names)
    assert result["valid"] is True, {name: r.get("error") for name, r in result["checkers"].items()}
    assert len(result["checkers"]["graphs"]["files"]) == graphs.MAX_KEYS
    assert all((tmp_path / name).exists() for name in result["checkers"]["graphs"]["files"])


def test_versions_are_coloured_by_what_became_of_them():
    h = HistoryBuilder()
    h.add(0, "k", 1, 0, 2, dot=("a", 1))
    h.add(1, "k", 2, 1, 3, dot=("b", 1))                      # dropped below
    h.add(2, "k", 3, 1, 50, outcome="info")                    # its version c/1 is only ever read
    h.add(0, "k", 4, 4, 6, dot=("a", 2), seen=[("a", 1), ("c", 1)], supersedes=[("a", 1), ("c", 1)])
    h.read(3, "k", [1, 3], 3.5, 3.8, versions=[version(("a", 1), [1]), version(("c", 1), [3])])
    h.read(3, "k", [1], 4, 4.5, versions=[version(("a", 1), [9])])  # a/1 with other elements: reused
    h.read(4, "k", [1, 3, 4], 10, 11, final=True,
           versions=[version(("a", 2), [1, 3, 4], seen=[("a", 1), ("c", 1)])])
    kv = analyse_key(h.history(), "k")
    assert {name: graphs.status(kv, dot) for name, dot in
            [("a/1", ("a", 1)), ("b/1", ("b", 1)), ("c/1", ("c", 1)), ("a/2", ("a", 2))]} == {
        "a/1": "anomaly", "b/1": "dropped", "c/1": "info", "a/2": "final"}


def analyse_key(history: list, key: str) -> KeyVersions:
    kv = analyse(history)[key]
    kv.find_anomalies()
    return kv
