"""premd's merge, origins, and catalog diffs, over the real registries in tests/data/registries."""

from __future__ import annotations

import json

import msgspec
import pytest

from common.messages import CatalogEntry, CatalogMeta, RegistryStatus
from registry_sync.merge import Diff, comparable, diff, encode_entries, merge, meta_changed
from registry_sync.state import RegistryConfig, seed
from registry_sync.validate import parse_document
from tests.testbed.registries import REGISTRIES_DIR

DATA = REGISTRIES_DIR


def entries(name: str, origin: str) -> list[CatalogEntry]:
    path = DATA / name
    if not path.is_file():
        pytest.fail(f"registry file {path} is missing from the repository's test data (tests/data/registries)")
    return parse_document(path.read_bytes(), origin).entries


def second_registry(main: list[CatalogEntry]) -> list[CatalogEntry]:
    """One id that main also has (with another name), one new id."""
    raw = json.loads((DATA / "prem-registry-main-manifests.json").read_bytes())
    dup = dict(raw[3], name="Shadowed copy")
    new = dict(raw[0], id="brand-new-service", name="Brand new")
    return parse_document(json.dumps([dup, new]).encode(), "second").entries


def test_main_plus_a_second_registry_is_the_union_in_premd_order() -> None:
    main = entries("prem-registry-main-manifests.json", "main")
    second = second_registry(main)
    merged = merge([main, second], [])
    assert [e.manifest.id for e in merged] == [e.manifest.id for e in main] + ["brand-new-service"]
    dup = next(e for e in merged if e.manifest.id == main[3].manifest.id)
    assert dup.origin == "main" and dup.manifest.name != "Shadowed copy"
    assert merged[-1].origin == "second"


def test_registry_order_decides_who_wins() -> None:
    main = entries("prem-registry-main-manifests.json", "main")
    second = second_registry(main)
    merged = merge([second, main], [])
    dup = next(e for e in merged if e.manifest.id == main[3].manifest.id)
    assert dup.origin == "second" and dup.manifest.name == "Shadowed copy"
    assert [e.manifest.id for e in merged][:2] == [main[3].manifest.id, "brand-new-service"]


def test_removing_a_registry_drops_only_its_own_services() -> None:
    main = entries("prem-registry-main-manifests.json", "main")
    mock = entries("prem-daemon-mock-manifests.json", "mock")
    dev = entries("prem-registry-dev-manifests.json", "dev")
    both = merge([main, dev, mock], [])
    without_dev = merge([main, mock], [])
    ids = {e.manifest.id for e in without_dev}
    # premd would also drop main's services whose ids dev defines; origins keep them here (docs/architecture.md).
    assert {e.manifest.id for e in main} <= ids
    assert {e.manifest.id for e in both if e.origin == "dev"}.isdisjoint(ids)


def test_custom_services_come_last_and_shadow_registry_ids() -> None:
    main = entries("prem-registry-main-manifests.json", "main")
    custom = [msgspec.structs.replace(main[0], origin="custom")]
    merged = merge([main], custom)
    assert merged[-1].origin == "custom" and merged[-1].manifest.id == main[0].manifest.id
    assert sum(e.manifest.id == main[0].manifest.id for e in merged) == 1
    assert len(merged) == 32


def test_diff_reports_added_removed_changed_in_order() -> None:
    main = entries("prem-registry-main-manifests.json", "main")
    old = encode_entries(main)
    changed = msgspec.structs.replace(main[5], manifest=msgspec.structs.replace(main[5].manifest, beta=False))
    mock = [e for e in entries("prem-daemon-mock-manifests.json", "m") if e.manifest.id.startswith("chat-")]
    new = encode_entries([*main[:2], *main[3:5], changed, *main[6:], *mock])
    d = diff(old, new)
    assert d.removed == [main[2].manifest.id]
    assert d.changed == [main[5].manifest.id]
    assert d.added == ["chat-mock-small", "chat-mock-medium", "chat-mock-large"]
    assert diff(new, new).empty


def test_diffs_chain_across_a_retry() -> None:
    total = Diff(added=["a"], changed=["b"]).then(Diff(removed=["c"], changed=["b", "d"]))
    assert total == Diff(added=["a"], removed=["c"], changed=["b", "d"])


def test_a_check_alone_is_not_a_change() -> None:
    status = RegistryStatus(url="u", status="ok", fetched_at=1.0, count=3)
    meta = CatalogMeta(generation=1, order=["a"], registries=[status], updated_at=0)
    checked = msgspec.structs.replace(status, checked_at=99.0)
    assert comparable(checked) == comparable(status)
    assert not meta_changed(meta, ["a"], [checked])
    assert meta_changed(meta, ["a"], [msgspec.structs.replace(status, status="error", error="HTTP 500")])
    assert meta_changed(meta, ["b"], [status])
    assert meta_changed(None, [], [])


def test_registry_list_seeding() -> None:
    first = seed(None, ["a", "b", "a"])
    assert first == RegistryConfig(urls=["a", "b"], seeded=["a", "b"])
    user_removed_b = RegistryConfig(urls=["a", "x"], seeded=["a", "b"])
    # The stored list wins; an env URL seen before stays removed; a new env URL is appended once.
    assert seed(user_removed_b, ["a", "b", "c"]) == RegistryConfig(urls=["a", "x", "c"], seeded=["a", "b", "c"])
    assert seed(user_removed_b, []) == user_removed_b
