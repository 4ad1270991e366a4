"""A default the documents state for a setting is the setting's default in common/settings.py.

docs/operations.md's table is generated from the Settings class (tests/unit/test_readme.py); the other documents
name a default beside the text that needs it (a table row, or ``PREMD_X`` (300 s)). They are checked here, so a
changed default cannot leave a document behind.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import msgspec
import pytest

from common.settings import Settings, env_name
from scripts.settings_table import BEGIN, END

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
FIELDS = {env_name(f): f for f in msgspec.structs.fields(Settings)}
UNITS = {"s": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3}

_NAME = r"`(PREMD?_[A-Z0-9_]+)`"
_ROW = re.compile(rf"^\| ({_NAME}(?:(?:, | / ){_NAME})*) \| ([^|]+) \|", re.M)
_PROSE = re.compile(rf"{_NAME} \((?:default:? )?(`[^`]+`|[0-9.]+(?: (?:s|KiB|MiB|GiB))?)(?: by default)?\)")
_VALUE = re.compile(r"^(`[^`]*`|unset|[0-9.]+(?: (?:s|KiB|MiB|GiB))?)$")


def _without_generated(text: str) -> str:
    head, _, rest = text.partition(BEGIN)
    return head + rest.partition(END)[2] if rest else text


def stated() -> list[tuple[str, str, str]]:
    """(document, setting, the default it states) for every default a document states."""
    found: list[tuple[str, str, str]] = []
    for path in DOCUMENTS:
        text = _without_generated(path.read_text())
        for row in _ROW.finditer(text):
            names = re.findall(_NAME, row.group(1))
            values = re.split(r", | / ", row.group(row.lastindex or 0).strip())
            if len(values) == len(names) and all(_VALUE.match(v) for v in values):
                found += [(path.name, name, value) for name, value in zip(names, values, strict=True)]
        found += [(path.name, m.group(1), m.group(2)) for m in _PROSE.finditer(text)]
    return found


def _as_setting(value: str) -> Any:
    """A document's words for a default, as the Python value."""
    if value == "unset":
        return None
    if value.startswith("`"):
        literal = value.strip("`")
        return {"true": True, "false": False}.get(literal.lower(), literal)
    number, _, unit = value.partition(" ")
    try:
        return float(number) * UNITS.get(unit, 1)
    except ValueError:  # an address, not a number
        return value


def _same(default: Any, value: Any) -> bool:
    if isinstance(default, bool) or isinstance(value, bool):
        return default is value
    if isinstance(default, int | float):
        try:
            return float(value) == float(default)
        except (TypeError, ValueError):
            return False
    if isinstance(default, tuple):
        return value in (",".join(default), " ".join(default))
    return bool(value == default)


def test_the_documents_state_defaults_that_the_checks_below_read() -> None:
    names = {name for _, name, _ in stated()}
    assert {"PREMD_IDLE_STOP_S", "PREMD_RECONCILE_INTERVAL_S", "PREMD_HOST", "PREMD_DOCKER_TIMEOUT_S"} <= names


def test_every_setting_a_document_gives_a_default_for_exists() -> None:
    assert [(doc, name) for doc, name, _ in stated() if name not in FIELDS] == []


# A default computed at start-up (the data directory follows XDG_DATA_HOME) is described, not stated.
FIXED = [
    (doc, name, value)
    for doc, name, value in stated()
    if name in FIELDS and FIELDS[name].default_factory is msgspec.NODEFAULT
]


@pytest.mark.parametrize(("document", "name", "value"), FIXED)
def test_a_stated_default_is_the_settings_default(document: str, name: str, value: str) -> None:
    default = FIELDS[name].default
    assert _same(default, _as_setting(value)), f"{document}: {name} ({value}), default {default!r}"
