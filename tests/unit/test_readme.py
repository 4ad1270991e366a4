"""The README is what a newcomer needs, every link in it resolves, and the settings table is current."""

from __future__ import annotations

import re
from pathlib import Path

from scripts.settings_table import BEGIN, END, OPERATIONS, table

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
LINK = re.compile(r"\]\(([^)#\s]+)(#[^)]*)?\)")


def test_the_settings_table_is_current() -> None:
    text = OPERATIONS.read_text()
    assert BEGIN in text and END in text
    current = text.split(BEGIN, 1)[1].split(END, 1)[0].strip()
    assert current == table(), "run: .venv/bin/python -m scripts.settings_table --write"


def test_readme_names_the_two_commands() -> None:
    text = README.read_text()
    assert "bash scripts/run.sh" in text and "bash scripts/test.sh" in text


def test_readme_stays_short() -> None:
    assert len(README.read_bytes()) < 12 * 1024, "move detail into docs/"


def test_every_relative_link_in_the_readme_and_docs_resolves() -> None:
    for doc in [README, *sorted((ROOT / "docs").glob("*.md"))]:
        for target, _anchor in LINK.findall(doc.read_text()):
            if "://" in target or target.startswith("mailto:"):
                continue
            assert (doc.parent / target).exists(), f"{doc.relative_to(ROOT)} links to missing {target}"
