"""A clone runs its own tests: no test or project module reads a path outside the repository."""

from __future__ import annotations

import re
from pathlib import Path

from tests.testbed.registries import REGISTRIES_DIR

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("builder", "common", "gateway", "premd", "registry_sync", "scheduler", "tests", "bench", "scripts")
# An absolute path into a workplace, or a climb out of the repository to a sibling folder.
OUTSIDE = re.compile(r"""["'](/work/|/home/)|\.parents?\[\d+\]\.parent\b|["']\.\./shared""")


def test_no_source_reads_outside_the_repository() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if OUTSIDE.search(line)
    ]
    assert offenders == []


def test_the_real_registries_are_in_the_repository() -> None:
    names = sorted(p.name for p in REGISTRIES_DIR.glob("*.json"))
    assert names == [
        "prem-daemon-mock-manifests.json",
        "prem-registry-dev-manifests.json",
        "prem-registry-main-manifests.json",
        "prem-registry-v1-manifests.json",
    ]
