"""The real registry documents the tests read, kept in the repository so a clone runs its tests on its own."""

from __future__ import annotations

from pathlib import Path

REGISTRIES_DIR = Path(__file__).resolve().parents[1] / "data" / "registries"
