"""gateway.listing: new host facts keep the encoded list only when no service's fit flags change."""

from __future__ import annotations

import json
import random
from pathlib import Path

import msgspec

from common.fit import MIB, assess
from common.manifest import Manifest
from common.messages import CatalogEntry, GpuInfo, HostFacts
from gateway.listing import _Thresholds

BUNDLED = Path(__file__).resolve().parents[2] / "registry_sync" / "bundled" / "main.json"
ENTRIES = [
    CatalogEntry(manifest=msgspec.convert(raw, Manifest), origin="test") for raw in json.loads(BUNDLED.read_text())
]


def _facts(rng: random.Random, gpus: bool) -> HostFacts:
    gpu = GpuInfo(
        index=0,
        uuid="GPU-0",
        name="test",
        memory_total_mib=rng.choice([8192, 24576]),
        memory_free_mib=rng.randrange(0, 24576),
        memory_used_mib=0,
    )
    return HostFacts(
        gpus=[gpu] if gpus else [],
        memory_total_bytes=rng.choice([8, 16, 32]) << 30,
        memory_available_bytes=rng.randrange(0, 32 << 30, MIB),
        disk_free_bytes=rng.randrange(0, 64 << 30),
        disk_total_bytes=1 << 40,
        docker_available=True,
        updated_at=0.0,
    )


def _flags(facts: HostFacts) -> list[object]:
    return [assess(entry.manifest, facts) for entry in ENTRIES]


def test_same_flags_is_never_wrong_and_often_right() -> None:
    thresholds = _Thresholds.of(ENTRIES)
    assert thresholds.needs and thresholds.sizes
    rng = random.Random(13)
    kept = 0
    for _ in range(400):
        old = _facts(rng, gpus=rng.random() < 0.3)
        # Most new facts are a small move of the old ones (what the scheduler's refresh writes).
        if rng.random() < 0.7:
            new = msgspec.structs.replace(
                old,
                memory_available_bytes=max(0, old.memory_available_bytes + rng.randrange(-8, 8) * MIB),
                disk_free_bytes=max(0, old.disk_free_bytes + rng.randrange(-4096, 4096)),
            )
        else:
            new = _facts(rng, gpus=rng.random() < 0.3)
        if thresholds.same_flags(old, new):
            kept += 1
            assert _flags(old) == _flags(new)
    assert kept > 100  # small moves mostly cross no requirement


def test_no_facts_or_gpus_appearing_always_rebuild() -> None:
    thresholds = _Thresholds.of(ENTRIES)
    rng = random.Random(1)
    facts = _facts(rng, gpus=False)
    assert not thresholds.same_flags(None, facts)
    assert not thresholds.same_flags(facts, None)
    with_gpu = _facts(rng, gpus=True)
    assert not thresholds.same_flags(facts, msgspec.structs.replace(facts, gpus=with_gpu.gpus))
