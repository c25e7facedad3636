"""The run summary dynacheck prints: one row per checker, whole figures only."""

from __future__ import annotations

from dynacheck.cli import summary_rows


def test_the_summary_shows_whole_figures_only():
    result = {"valid": True, **{f"figure_{index}_count": 1000 + index for index in range(20)}}
    (_, _, evidence), = summary_rows({"checkers": {"siblings": result}})
    assert len(evidence) <= 105 and evidence.endswith(", ...")
    assert all(part == "..." or part.split()[-1].startswith("10") and len(part.split()[-1]) == 4
               for part in evidence.split(", "))
