"""The wheelhouse (``dynactl package``, ``dynactl deploy``, a dynacheck run on hosts): real pip
builds of this checkout."""

from __future__ import annotations

import threading
from pathlib import Path

from dynactl.package import WHEEL_PREFIX, build_wheelhouse

REPO = Path(__file__).resolve().parents[2]


def test_a_rebuild_never_leaves_the_wheelhouse_without_its_project_wheel(tmp_path):
    """Two builds of the same checkout at once (a deploy and a dynacheck run), while a reader
    looks for the project wheel: it is there at every look, and both builds succeed."""
    first = build_wheelhouse(tmp_path, REPO)
    wheel = Path(first["wheel"])
    outcomes: list[object] = []

    def rebuild() -> None:
        try:
            outcomes.append(build_wheelhouse(tmp_path, REPO))
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            outcomes.append(exc)

    builders = [threading.Thread(target=rebuild) for _ in range(2)]
    for builder in builders:
        builder.start()
    looks = missing = 0
    while any(builder.is_alive() for builder in builders):
        looks += 1
        missing += not wheel.is_file()
    for builder in builders:
        builder.join()
    assert looks > 0 and missing == 0
    assert [outcome["wheel"] for outcome in outcomes] == [str(wheel)] * 2, outcomes
    assert outcomes[0]["wheels"] == first["wheels"]
    assert [path.name for path in tmp_path.iterdir() if not path.name.endswith(".whl")] == []  # no scratch left
    assert [path.name for path in tmp_path.glob(f"{WHEEL_PREFIX}*")] == [wheel.name]
