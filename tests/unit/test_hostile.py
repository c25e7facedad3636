"""The fuzz generator (tests/hostile.py) is deterministic in its seed: a failing seed replays."""

from __future__ import annotations

import random

from tests.hostile import Target, http_cases, peer_cases

TARGET = Target(members=("n1", "n2", "n3"), peers=("127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"),
                read_keys=("fz-a", "fz-b"))


def test_the_same_seed_gives_the_same_cases_and_another_seed_others():
    first = http_cases(random.Random(7), TARGET, 300), peer_cases(random.Random(7), TARGET, 200)
    again = http_cases(random.Random(7), TARGET, 300), peer_cases(random.Random(7), TARGET, 200)
    other = http_cases(random.Random(8), TARGET, 300), peer_cases(random.Random(8), TARGET, 200)
    assert first == again
    assert first != other

