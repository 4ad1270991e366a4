"""The README documents every setting exactly as common/settings.py defines it."""

from __future__ import annotations

from pathlib import Path

from scripts.settings_table import BEGIN, END, table

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_settings_table_is_current() -> None:
    text = README.read_text()
    assert BEGIN in text and END in text
    current = text.split(BEGIN, 1)[1].split(END, 1)[0].strip()
    assert current == table(), "run: .venv/bin/python -m scripts.settings_table --write README.md"


def test_readme_names_the_two_commands() -> None:
    text = README.read_text()
    assert "bash scripts/run.sh" in text and "bash scripts/test.sh" in text
