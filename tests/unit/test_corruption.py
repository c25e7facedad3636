"""The corrupt nemesis' host-side tool: the seed decides the file and the damage (pure), and applying
it flips exactly the chosen bits or truncates to the chosen length."""

from __future__ import annotations

import json
import random

from hypothesis import given
from hypothesis import strategies as st

from dynacheck.nemesis import corruption

FILES = {"records.db": 65536, "meta.db": 16384, "log.0000000001": 200000, "__db.001": 8192, "empty": 0,
         "identity.json": 100}


@given(st.sampled_from(sorted(corruption.TARGET_PATTERNS)), st.sampled_from(["bitflip", "truncate"]),
       st.integers(1, 64), st.integers(0, 10_000))
def test_the_seed_chooses_a_matching_non_empty_file_and_damage_inside_it(target, mode, flips, seed):
    action = corruption.choose(FILES, target, mode, flips, random.Random(seed))
    assert action == corruption.choose(FILES, target, mode, flips, random.Random(seed))
    name = action["file"]
    assert name in corruption.candidates(FILES, target) and FILES[name] > 0
    assert name != "identity.json"  # not a Berkeley DB file
    if target != "any":
        assert name.startswith(corruption.TARGET_PATTERNS[target][0])
    if mode == "truncate":
        assert 0 <= action["length"] < FILES[name]
    else:
        assert 1 <= len(action["offsets"]) <= flips
        assert all(0 <= offset < FILES[name] and 0 <= bit < 8 for offset, bit in action["offsets"])


def test_nothing_to_corrupt_is_said_not_invented():
    assert corruption.choose({"records.db": 0}, "records", "bitflip", 8, random.Random(1)) == \
        {"file": None, "mode": "bitflip"}


def test_bit_flips_change_exactly_the_chosen_bits(tmp_path, capsys):
    original = bytes(range(256)) * 64
    (tmp_path / "records.db").write_bytes(original)
    assert corruption.main([str(tmp_path), "--target", "records", "--mode", "bitflip", "--flips", "16",
                            "--seed", "5"]) == 0
    action = json.loads(capsys.readouterr().out)
    damaged = (tmp_path / "records.db").read_bytes()
    changed = {index for index, (a, b) in enumerate(zip(original, damaged, strict=True)) if a != b}
    assert changed == {offset for offset, _ in action["offsets"]}
    for offset, bit in action["offsets"]:
        flipped = sum(1 for o, _ in action["offsets"] if o == offset)
        if flipped == 1:
            assert original[offset] ^ damaged[offset] == 1 << bit


def test_a_truncation_cuts_the_file_to_the_chosen_length(tmp_path, capsys):
    (tmp_path / "meta.db").write_bytes(b"x" * 10_000)
    assert corruption.main([str(tmp_path), "--target", "meta", "--mode", "truncate", "--seed", "2"]) == 0
    action = json.loads(capsys.readouterr().out)
    assert (tmp_path / "meta.db").stat().st_size == action["length"] < 10_000


def test_a_missing_directory_is_a_usage_error(tmp_path):
    assert corruption.main([str(tmp_path / "nowhere")]) == 2
