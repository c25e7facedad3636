"""Quorum state machines: when a GET or PUT is answered, and with what."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from dynamod.core.quorum import GetCore, Outcome, PutCore
from dynamod.core.versions import CausalContext, Sibling

REPLICAS = ("n1", "n2", "n3")


def version(actor: str, counter: int = 1, past: CausalContext | None = None) -> Sibling:
    return Sibling(dot=(actor, counter), past=past or CausalContext(), value=actor.encode())


def test_put_succeeds_at_w_acks():
    core = PutCore(REPLICAS, needed=2)
    core.add_ack("n1")
    assert not core.done()
    core.add_ack("n2")
    assert core.response().outcome is Outcome.OK and core.response().acks == 2


def test_put_fails_as_soon_as_w_is_out_of_reach():
    core = PutCore(REPLICAS, needed=3)
    core.add_ack("n1")
    core.add_error("n2", "down")
    result = core.response()
    assert result.outcome is Outcome.FAILED and result.needed == 3 and result.acks == 1


def test_put_times_out_when_replicas_stay_silent():
    core = PutCore(REPLICAS, needed=2)
    core.add_ack("n1")
    core.timed_out()
    assert core.response().outcome is Outcome.FAILED
    assert core.response().reason == "timeout"


def test_duplicate_acks_count_once():
    core = PutCore(REPLICAS, needed=2)
    core.add_ack("n1")
    core.add_ack("n1")
    assert not core.done()


@given(st.lists(st.tuples(st.sampled_from(REPLICAS), st.booleans()), max_size=6), st.integers(1, 3))
def test_put_outcome_matches_counts(events, w):
    core = PutCore(REPLICAS, needed=w)
    for replica, ok in events:
        (core.add_ack(replica) if ok else core.add_error(replica, "x"))
    acks, errors = len(core.acks), len(core.errors)
    assert acks + errors <= 3
    expected = Outcome.OK if acks >= w else Outcome.FAILED if 3 - errors < w else Outcome.PENDING
    assert core.outcome() is expected


def test_get_answers_after_r_replies_with_reconciled_siblings():
    older = version("a")
    newer = version("b", past=older.clock())
    concurrent = version("c")
    core = GetCore(REPLICAS, needed=2)
    core.add_reply("n1", (older, concurrent))
    assert not core.done()
    core.add_reply("n2", (newer,))
    result = core.response()
    assert result.outcome is Outcome.OK
    assert {s.dot for s in result.siblings} == {newer.dot, concurrent.dot}
    assert sorted(core.stale_replicas()) == ["n1", "n2"]


def test_get_with_not_found_replies_is_an_empty_answer():
    core = GetCore(REPLICAS, needed=2)
    core.add_reply("n1", ())
    core.add_reply("n2", ())
    assert core.response().outcome is Outcome.OK and core.response().siblings == ()


def test_get_fails_when_r_is_out_of_reach():
    core = GetCore(REPLICAS, needed=3)
    core.add_reply("n1", ())
    core.add_error("n3", "down")
    assert core.response().outcome is Outcome.FAILED
