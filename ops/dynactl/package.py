"""A wheelhouse of the project and every runtime dependency, built on the controller.

Hosts install from it with ``pip install --no-index --find-links WHEELS dynamo-toolkit``, so no
host needs the internet (the testbed's hosts have none). The project wheel is built from a clean
copy of the checkout with a fixed SOURCE_DATE_EPOCH: the same source gives the same bytes, so
Ansible's copy and the Fabric deploy see "unchanged" and a second run changes nothing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

DISTRIBUTION = "dynamo-toolkit"
WHEEL_PREFIX = "dynamo_toolkit-"
DEFAULT_WHEELHOUSE = ".dynamo/wheelhouse"
# Not part of a build: local state, virtual environments, caches and checker stores.
_NOT_SOURCE = shutil.ignore_patterns(".git", ".venv", "venv", ".dynamo", "store", "build", "dist", "*.egg-info",
                                     "__pycache__", ".pytest_cache", ".ruff_cache", ".hypothesis", "*.pyc")
_REPRODUCIBLE_EPOCH = "315532800"  # 1980-01-01, the earliest time a zip entry can carry


class PackageError(Exception):
    """The wheelhouse could not be built; the message says why."""


def default_source() -> Path:
    """The checkout this dynactl runs from (an editable install), if it is one."""
    candidate = Path(__file__).resolve().parents[2]
    if (candidate / "pyproject.toml").is_file():
        return candidate
    raise PackageError("dynactl is not running from a checkout: give --source CHECKOUT")


def build_wheelhouse(directory: str | Path = DEFAULT_WHEELHOUSE, source: str | Path | None = None) -> dict:
    """Build (or refresh) the wheelhouse; returns {"wheel", "dir", "wheels"}.

    The wheels are built in a scratch directory inside it and then renamed into place, each
    rename atomic: a deploy or a dynacheck run reading the wheelhouse while another build of the
    same checkout refreshes it sees the old wheel or the new one, never none (two builds at once
    were seen to fail a deploy with "No such file or directory" for the project wheel)."""
    source = Path(source).resolve() if source else default_source()
    if not (source / "pyproject.toml").is_file():
        raise PackageError(f"{source} is not a checkout of the project (no pyproject.toml)")
    directory = Path(directory).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    environment = {**os.environ, "SOURCE_DATE_EPOCH": _REPRODUCIBLE_EPOCH, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    with tempfile.TemporaryDirectory(prefix="dynamo-build-") as scratch, \
            tempfile.TemporaryDirectory(prefix=".building-", dir=directory) as built:
        clean = Path(scratch) / "src"
        shutil.copytree(source, clean, ignore=_NOT_SOURCE, symlinks=True)
        result = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", built,
             "--find-links", str(directory), str(clean)],
            capture_output=True, text=True, env=environment, check=False)
        if result.returncode != 0:
            raise PackageError("pip wheel failed:\n" + "\n".join(result.stderr.strip().splitlines()[-15:]))
        fresh = sorted(path.name for path in Path(built).glob("*.whl"))
        project = [name for name in fresh if name.startswith(WHEEL_PREFIX)]
        if len(project) != 1:
            raise PackageError(f"expected one {WHEEL_PREFIX}*.whl from the build, found {project}")
        for name in fresh:
            os.replace(Path(built) / name, directory / name)
    for old in directory.glob(f"{WHEEL_PREFIX}*.whl"):
        if old.name != project[0]:
            old.unlink(missing_ok=True)  # an earlier version's wheel
    wheels = sorted(path.name for path in directory.glob("*.whl"))
    return {"wheel": str(directory / project[0]), "dir": str(directory), "wheels": wheels}
