"""The Ansible role and playbooks stay ansible-lint clean (production profile) and parse."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
ANSIBLE = Path(__file__).resolve().parents[2] / "ansible"


def test_ansible_lint_passes_the_production_profile():
    if not (BIN / "ansible-lint").exists():
        pytest.skip("ansible-lint is not installed (pip install -e '.[dev]')")
    result = subprocess.run([str(BIN / "ansible-lint"), "--profile", "production", "--offline"],
                            capture_output=True, text=True, cwd=ANSIBLE, timeout=600, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


@pytest.mark.parametrize("playbook", ["site.yml", "rolling_restart.yml", "join.yml", "decommission.yml"])
def test_playbooks_pass_a_syntax_check(playbook):
    if not (BIN / "ansible-playbook").exists():
        pytest.skip("ansible-core is not installed (pip install -e '.[dev]')")
    result = subprocess.run([str(BIN / "ansible-playbook"), "--syntax-check", "-i", "inventory/example.ini", playbook],
                            capture_output=True, text=True, cwd=ANSIBLE, timeout=300, check=False)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
