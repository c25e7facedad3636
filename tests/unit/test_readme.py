"""The README's configuration reference names every setting the daemon accepts."""

from __future__ import annotations

from pathlib import Path

from dynamod.config import SETTINGS, settings_table

README = Path(__file__).resolve().parents[2] / "README.md"


def test_every_setting_is_documented():
    text = README.read_text()
    missing = [s.name for s in SETTINGS if f"`{s.name}`" not in text]
    assert not missing, f"settings missing from README: {missing}"


def test_the_configuration_table_is_the_one_derived_from_the_settings():
    assert settings_table() in README.read_text(), \
        "README's configuration table differs from dynamod.config.settings_table(): paste its output"


def test_readme_shows_the_two_commands():
    text = README.read_text()
    assert "make demo" in text and "make test" in text
