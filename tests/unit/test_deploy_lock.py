"""deploy/requirements.lock pins every runtime dependency of pyproject.toml, each with hashes."""

from __future__ import annotations

import re

import pytest

from scripts.deploy_build import INSTALLER, INSTALLER_LOCK, LOCK, parse_lock, runtime_requirements


def _name(requirement: str) -> str:
    match = re.match(r"[A-Za-z0-9._-]+", requirement)
    assert match is not None, requirement
    return re.sub(r"[-_.]+", "-", match.group(0)).lower()


def test_every_runtime_dependency_is_locked_with_hashes() -> None:
    pins = parse_lock(LOCK.read_text())
    locked = {pin.split("==")[0] for pin in pins}
    missing = {_name(r) for r in runtime_requirements()} - locked
    assert not missing, f"run `python -m scripts.deploy_build lock`: {sorted(missing)} not in {LOCK.name}"
    assert all(pins.values())


def test_installer_lock_pins_the_installer() -> None:
    assert set(parse_lock(INSTALLER_LOCK.read_text())) == {INSTALLER}


def test_unhashed_line_is_refused() -> None:
    with pytest.raises(SystemExit, match="line 2"):
        parse_lock("# comment\naiohttp==3.11.0\n")
