"""The declared peer operations: every operation's schema (a valid payload reaches its handler,
malformed ones are refused ``bad_request`` before it runs), stopping, registration, and the typed
errors handlers raise."""

from __future__ import annotations

import msgpack
import pytest
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs

from dynamod.config import build_config
from dynamod.core.encoding import context_to_wire, siblings_to_wire
from dynamod.core.membership import ClusterState, MalformedState, MemberEntry, state_to_wire
from dynamod.core.sizes import KeyTooLarge
from dynamod.core.versions import CausalContext, Sibling
from dynamod.net.operations import (
    INTERNAL_MESSAGE,
    OPERATIONS,
    Code,
    Conflict,
    PeerError,
    PeerLimits,
    PeerOperations,
    PeerRefusal,
    UndeclaredOperation,
    describe_operations,
    error_payload,
    local_error,
)
from dynamod.node import Node
from dynamod.security.identity import Principal
from dynamod.storage.store import StorageBroken

LIMITS = PeerLimits(n=3, partitions=16, max_value_size=1024, max_key_size=4096, tree_depth=4)


def packed(*values: bytes) -> bytes:
    siblings = [Sibling(dot=("a", i + 1), past=CausalContext(), value=v, deleted=False, timestamp=1)
                for i, v in enumerate(values)]
    return msgpack.packb(siblings_to_wire(siblings), use_bin_type=True)


def state(partitions: int = 16) -> dict:
    members = [MemberEntry(f"n{i}", f"h{i}:7000", f"h{i}:8000") for i in (1, 2, 3)]
    return state_to_wire(ClusterState.initial(members, partitions))


PACKED = packed(b"v")
CONTEXT = context_to_wire(CausalContext.of({"a": 2}, [("b", 5)]))
HUGE = 2**64 - 1

#: op -> (valid payloads, malformed payloads)
CASES: dict[str, tuple[list, list]] = {
    "ping": ([None], [1, [], b"", False]),
    "get": ([[b"k"], ["ключ".encode()]],
            [[], [b"k", b"x"], [b""], [b"x" * 1025], [b"\xff\xfe"], ["k"], b"k", [None], [7], None]),
    "put": ([[b"k", PACKED, None], [b"k", PACKED, "n2"]],
            [[b"k", b"garbage", None], [b"k", PACKED, 7], [b"k", PACKED, ""], [b"k", PACKED], [b"k", "str", None],
             [b"k", b"", None], [b"k", packed(b"v" * 9000), None],  # past 2 * max_key_size
             [b"k", msgpack.packb([["a", 1, [{}, []], "a str value", False, 1]]), None],
             [b"k", msgpack.packb([["a", 0, [{}, []], b"v", False, 1]]), None],
             [b"k", PACKED, None, None], [b"\xff", PACKED, None]]),
    "coordinate_put": ([[b"k", b"v", [{}, []], False, 2], [b"k", b"", CONTEXT, True, 3, 0],
                        [b"k", b"v" * 1024, [{}, []], False, 1, 1]],
                       [[b"k", b"v", [{}, []], False, "2"],  # the fuzzer's: it used to write and then fail
                        [b"k", b"v", [{}, []], False, 0], [b"k", b"v", [{}, []], False, 4],
                        [b"k", b"v", [{}, []], False, True], [b"k", b"v", [{}, []], False, HUGE],
                        [b"k", b"v", [{}, []], False, -1],
                        [b"k", "v", [{}, []], False, 2],  # a str value used to plant an undecodable record
                        [b"k", b"v" * 1025, [{}, []], False, 2],
                        [b"k", b"v", [{}, []], 0, 2], [b"k", b"v", [{}, []], "false", 2],
                        [b"k", b"v", [{}], False, 2], [b"k", b"v", [{"a": -1}, []], False, 2],
                        [b"k", b"v", [{"a": True}, []], False, 2], [b"k", b"v", "ctx", False, 2],
                        [b"k", b"v", [{}, []], False, 2, -1], [b"k", b"v", [{}, []], False, 2, True],
                        [b"k", b"v", [{}, []], False, 2, HUGE], [b"k", b"v", [{}, []], False, 2, 1, 0],
                        [b"\xc3\x28", b"v", [{}, []], False, 2], [b"", b"v", [{}, []], False, 2],
                        [b"k", b"v", [{}, []], False], {"key": b"k"}]),
    "aae_hashes": ([[3, 2, [0, 3]], [15, 0, [0]], [0, 4, list(range(16))], [0, 1, []]],
                   [[10**6, 0, [0]],  # the fuzzer's: it allocated a tree per frame
                    [16, 0, [0]], [-1, 0, [0]], [HUGE, 0, [0]], [True, 0, [0]],
                    [0, 5, [0]], [0, HUGE, [0]], [0, -1, [0]], [0, True, [0]],
                    [0, 1, [2]], [0, 0, [0, 0]], [0, 0, [-1]], [0, 4, [16]], [0, 0, "x"], [0, 0, [None]],
                    [0, 0], [0, 0, [0], 1], None]),
    "aae_records": ([[3, [0, 15]], [0, []]],
                    [[16, [0]], [0, [16]], [0, [-1]], [0, [0] * 17], [0, None], [0, [True]], [0], "x"]),
    "hints_for": (["n2"], [7, "", "x" * 257, None, ["n2"], b"n2"]),
    "goodbye": ([["n2"]], ["n2", [], [7], ["n2", "extra"], [""], None]),
    "gossip": ([state()], [{"members": 3}, [1, 2], state(partitions=8), None, {**state(), "ownership": ["x"] * 16}]),
    "join": ([["n4", "h4:7000", "h4:8000"], ["n4", "h4:7000", "h4:8000", {"replace": "n3", "dry_run": True}],
              ["n4", "h4:7000", "h4:8000", {}]],
             [["n4", "nowhere", "h4:8000"], ["n4", 7, None], ["n4", "h:1", "h:2", {"bogus": 1}],
              ["n4", "h:1", "h:2", {"dry_run": "yes"}], ["n4", "h:1", "h:2", {"replace": 3}],
              ["n4", "h:1", "h:2", None], ["", "h:1", "h:2"], ["n4", "h:1"], ["n4", "h:0", "h:2"],
              ["n4", "h:1", "h:2", {}, 5], "n4"]),
    "cluster_info": ([None], [0, [], {}]),
    "reap": ([[b"k", b"\x00" * 16]], [[b"k", "not bytes"], [b"k", b"short"], [b"k"], [b"", b"\x00" * 16],
                                      [b"k", b"\x00" * 17]]),
    "put_many": ([[5, [[b"k", PACKED]]], [0, [], "n2"], [5, [[b"a", PACKED], [b"b", PACKED]], None]],
                 [[-1, []], [True, []], [HUGE, []], [1, [[b"k"]]], [1, [[b"k", b"garbage"]]],
                  [1, [[b"k", PACKED]], 7], [1, "x"], [1, [[b"k", PACKED]] * 10_001], [1, [[b"", PACKED]]],
                  [1, [[b"k", PACKED]], None, None], [1]]),
}


class Recording:
    """Handlers for every declared operation that remember what they were given."""

    def __init__(self, operations: PeerOperations):
        self.calls: list[tuple[str, object]] = []
        for op in OPERATIONS:
            operations.register(op.name, lambda arguments, *caller, name=op.name:
                                self.calls.append((name, arguments)) or name)


def served(stopping: bool = False) -> tuple[PeerOperations, Recording]:
    operations = PeerOperations(LIMITS, stopping=lambda: stopping)
    return operations, Recording(operations)


def refusal(operations: PeerOperations, op: str, payload: object) -> PeerRefusal:
    with pytest.raises(PeerRefusal) as refused:
        operations.answer(op, payload)
    return refused.value


def test_every_declared_operation_has_cases_and_a_description():
    assert set(CASES) == {op.name for op in OPERATIONS}
    assert len({op.name for op in OPERATIONS}) == len(OPERATIONS)
    text = describe_operations()
    assert all(op.name in text for op in OPERATIONS)


@pytest.mark.parametrize("op, payload", [(op, p) for op, (valid, _) in CASES.items() for p in valid])
def test_a_valid_payload_reaches_the_handler(op, payload):
    operations, handlers = served()
    assert operations.answer(op, payload) == op
    assert [name for name, _ in handlers.calls] == [op]


@pytest.mark.parametrize("op, payload", [(op, p) for op, (_, bad) in CASES.items() for p in bad],
                         ids=lambda value: value if isinstance(value, str) else None)
def test_a_malformed_payload_is_refused_before_the_handler_with_one_log_line(op, payload):
    operations, handlers = served()
    with capturedLogs() as logs:
        refused = refusal(operations, op, payload)
    assert refused.code == Code.BAD_REQUEST and refused.message.startswith(f"{op}: ")
    assert handlers.calls == []
    assert len(logs) == 1 and logs[0]["log_level"] == LogLevel.warn and "log_failure" not in logs[0]


def test_handlers_get_decoded_arguments():
    operations, handlers = served()
    operations.answer("put", [b"k", packed(b"x", b"y"), "n2"])
    operations.answer("coordinate_put", [b"k", b"v", CONTEXT, False, 2, 1])
    operations.answer("put_many", [3, [[b"k", PACKED]]])
    (_, put), (_, coordinate), (_, many) = handlers.calls
    assert put[0] == b"k" and [s.value for s in put[1]] == [b"x", b"y"] and put[2] == "n2"
    assert coordinate == [b"k", b"v", CausalContext.of({"a": 2}, [("b", 5)]), False, 2, 1]
    assert many[0] == 3 and many[1][0][0] == b"k" and many[1][0][1][0].value == b"v"


def test_unknown_and_unhandled_operations_are_answered_unknown_operation():
    operations, handlers = served()
    assert refusal(operations, "nope", None).code == Code.UNKNOWN_OPERATION
    assert refusal(operations, "x" * 10_000, None).code == Code.UNKNOWN_OPERATION
    bare = PeerOperations(LIMITS)  # declared, but no service registered a handler
    assert bare.unhandled() == [op.name for op in OPERATIONS]
    assert refusal(bare, "gossip", state()).code == Code.UNKNOWN_OPERATION
    assert handlers.calls == []


def test_registering_an_undeclared_operation_or_one_twice_fails():
    operations = PeerOperations(LIMITS)
    with pytest.raises(UndeclaredOperation, match="not a declared"):
        operations.register("echo", lambda arguments: arguments)
    operations.register("ping", lambda _: True)
    with pytest.raises(UndeclaredOperation, match="already"):
        operations.register("ping", lambda _: True)


def test_a_node_serves_every_declared_operation(tmp_path):
    config = build_config({"node_id": "n1", "engine": "memory", "data_dir": str(tmp_path), "http": "127.0.0.1:1",
                           "peer": "127.0.0.1:2"})
    node = Node(config, Clock())
    assert node.coordinator.operations.unhandled() == []
    assert node.coordinator.operations.limits == PeerLimits.from_config(config)


def test_a_stopping_node_refuses_exactly_the_operations_declared_so():
    operations, handlers = served(stopping=True)
    refused = {op.name for op in OPERATIONS if op.refused_while_stopping}
    assert refused == {"ping", "get", "put", "coordinate_put"}
    for op, (valid, _) in CASES.items():
        if op in refused:
            assert refusal(operations, op, valid[0]).code == Code.NODE_STOPPING
        else:
            assert operations.answer(op, valid[0]) == op
    assert {name for name, _ in handlers.calls} == set(CASES) - refused


def with_handler(op: str, handler) -> PeerOperations:
    operations = PeerOperations(LIMITS)
    operations.register(op, handler)
    return operations


def raising(error: Exception):
    def handler(arguments):
        raise error
    return handler


@pytest.mark.parametrize("later", [False, True], ids=["raised", "failed deferred"])
@pytest.mark.parametrize("error, code, message", [
    (Conflict("stale ring"), Code.CONFLICT, "stale ring"),
    (KeyTooLarge(5000, 4096), Code.KEY_TOO_LARGE, str(KeyTooLarge(5000, 4096))),
    (StorageBroken("BDB0055 illegal flag"), Code.UNAVAILABLE, "this node's storage failed"),
    (MalformedState("state of another cluster"), Code.CONFLICT, "state of another cluster"),
])
def test_typed_errors_of_a_handler_are_answered_with_their_code_and_no_traceback(error, code, message, later):
    handler = (lambda _: defer.fail(error)) if later else raising(error)
    operations = with_handler("reap", handler)
    with capturedLogs() as logs:
        if later:
            failures = []
            operations.answer("reap", [b"k", b"\x00" * 16]).addErrback(failures.append)
            refused = failures[0].value
        else:
            refused = refusal(operations, "reap", [b"k", b"\x00" * 16])
    assert (refused.code, refused.message) == (code, message)
    assert len(logs) == 1 and "log_failure" not in logs[0]


@pytest.mark.parametrize("later", [False, True], ids=["raised", "failed deferred"])
def test_a_bug_in_a_handler_is_answered_internal_without_its_text_and_logged_once_with_its_traceback(later):
    error = ValueError("BDB0055 illegal flag")
    operations = with_handler("get", (lambda _: defer.fail(error)) if later else raising(error))
    with capturedLogs() as logs:
        if later:
            failures = []
            operations.answer("get", [b"k"]).addErrback(failures.append)
            refused = failures[0].value
        else:
            refused = refusal(operations, "get", [b"k"])
    assert refused.code == Code.INTERNAL and "BDB" not in refused.message
    assert len(logs) == 1 and logs[0]["log_failure"].value is error


def test_refusals_travel_as_code_and_message_and_come_back_typed():
    too_large = PeerError.from_wire(error_payload(refusal(with_handler("reap", raising(KeyTooLarge(5000, 4096))),
                                                          "reap", [b"k", b"\x00" * 16])))
    assert too_large.code == Code.KEY_TOO_LARGE
    again = local_error(too_large)
    assert isinstance(again, KeyTooLarge) and (again.size, again.limit) == (5000, 4096)
    assert error_payload(Conflict("no")) == ["conflict", "no"]
    assert error_payload(RuntimeError("secret")) == ["internal", INTERNAL_MESSAGE]
    stopping = PeerError.from_wire(["node_stopping", "node is stopping"])
    assert stopping.code == Code.NODE_STOPPING and local_error(stopping) is stopping
    for unreadable in ("node is stopping", [1, 2], ["code"], ["code", "message", "details"], None):
        assert PeerError.from_wire(unreadable).code == Code.INTERNAL  # never parsed for meaning
    assert len(PeerError.from_wire(["c", "m" * 10**6]).message) <= 2000


# -- the fuzzer's findings, on an in-process cluster ------------------------------------------------


def test_tree_requests_out_of_range_build_nothing_and_in_range_ones_for_absent_partitions_neither():
    from dynamod.antientropy import AntiEntropyService
    from tests.sim import make_cluster

    network, clock = make_cluster(size=3, partitions=8)
    node = network.nodes["n1"]
    service = AntiEntropyService(node, lambda peer: True, clock, 1.0)
    with capturedLogs() as logs:
        for i in range(1000):
            with pytest.raises(PeerRefusal) as refused:
                node.handle_peer_request("aae_hashes", [10**6 + i, 0, [0]])
            assert refused.value.code == Code.BAD_REQUEST
    assert len(logs) == 1000 and not any("log_failure" in event for event in logs)
    for partition in range(8):  # nothing stored here: answered from the shared empty tree
        assert set(node.handle_peer_request("aae_hashes", [partition, 10, list(range(1024))])) == set(range(1024))
    assert service.trees == {}


def test_a_forwarded_put_is_checked_before_anything_is_written():
    from tests.sim import fired, make_cluster

    network, _ = make_cluster(size=4, n=3)
    key = next(k for k in (b"k%d" % i for i in range(100)) if "n4" in network.nodes["n1"].replicas(k))
    replica = network.nodes["n4"]
    for payload in ([key, b"v", [{}, []], False, "2"], [key, "v", [{}, []], False, 2],
                    [key, b"v" * (1024 * 1024 + 1), [{}, []], False, 2], [key, b"v", [{}, []], False, 0]):
        with pytest.raises(PeerRefusal) as refused:
            replica.handle_peer_request("coordinate_put", payload)
        assert refused.value.code == Code.BAD_REQUEST
        assert fired(replica.store.get(key)) is None, "nothing planted"
    answer = fired(replica.handle_peer_request("coordinate_put", [key, b"v", [{}, []], False, 2]))
    assert answer["outcome"] == "ok" and fired(replica.store.get(key)) is not None


def test_a_forwarded_put_the_replica_refuses_for_size_is_key_too_large_at_the_forwarding_node():
    import attrs

    from tests.sim import make_cluster

    network, _ = make_cluster(size=4, n=3)
    for coordinator in network.nodes.values():
        coordinator.settings = attrs.evolve(coordinator.settings, key_size_warning=1000, max_key_size=1500)
    key, outsider = next((k, node) for k in (b"k%d" % i for i in range(100)) for node in network.nodes
                         if node not in network.nodes["n1"].replicas(k))
    failures = []
    network.nodes[outsider].put(key, b"x" * 2000, CausalContext(), 2).addErrback(failures.append)
    assert failures and failures[0].check(KeyTooLarge) and failures[0].value.limit == 1500


def test_over_tls_a_peer_speaks_only_for_itself():
    operations, handlers = served()
    n2 = Principal("node", "n2")
    join = ["n9", "127.0.0.1:7009", "127.0.0.1:8009"]
    refused = refusal_from(operations, "join", join, n2)
    assert refused.code == Code.FORBIDDEN and "'n9'" in refused.message and "'n2'" in refused.message
    assert refusal_from(operations, "goodbye", ["n3"], n2).code == Code.FORBIDDEN
    assert handlers.calls == []
    assert operations.answer("goodbye", ["n2"], n2) == "goodbye"
    assert operations.answer("join", ["n2", "127.0.0.1:7002", "127.0.0.1:8002"], n2) == "join"


def refusal_from(operations: PeerOperations, op: str, payload: object, caller: Principal) -> PeerRefusal:
    with pytest.raises(PeerRefusal) as refused:
        operations.answer(op, payload, caller)
    return refused.value
