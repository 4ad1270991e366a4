"""Validation of registry documents, over the real registries in tests/data/registries."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest

from common.manifest import Manifest
from common.messages import CatalogEntry
from registry_sync.validate import (
    CUSTOM_REQUIRED,
    MAX_REPORTED_SKIPS,
    DocumentError,
    EntryError,
    check_entry,
    parse_document,
)
from tests.testbed.registries import REGISTRIES_DIR

DATA = REGISTRIES_DIR


def registry(name: str) -> bytes:
    path = DATA / name
    if not path.is_file():
        pytest.fail(f"registry file {path} is missing from the repository's test data (tests/data/registries)")
    return path.read_bytes()


def docker(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": "svc",
        "name": "Svc",
        "interfaces": ["chat"],
        "modelInfo": {},
        "dockerImages": {"cpu": {"image": "example/svc:1", "size": 10}},
        "defaultPort": 8000,
        "defaultExternalPort": 8100,
    }
    base.update(fields)
    return base


def test_main_registry_loads_all_32_services_with_every_field() -> None:
    parsed = parse_document(registry("prem-registry-main-manifests.json"), "main")
    assert len(parsed.entries) == 32
    assert parsed.skipped == []
    assert parsed.unsupported == 0
    by_id = {e.manifest.id: e.manifest for e in parsed.entries}
    vicuna = by_id["vicuna-7b-q4"]
    assert vicuna.docker_images is not None and vicuna.docker_images.cpu is not None
    assert vicuna.docker_images.cpu.image == "ghcr.io/premai-io/chat-vicuna-7b-q4-cpu:1.0.4"
    assert vicuna.memory_requirements_mib() == 4096
    assert (vicuna.default_port, vicuna.default_external_port) == (8000, 8111)
    assert by_id["pgvector"].exec_commands == ["psql -U postgres -d postgres -c 'CREATE EXTENSION vector;'"]
    assert by_id["tabby-codegen-2b"].command == "serve --model TabbyML/Codegen-2B --device cuda"
    assert by_id["replit-v1-3b"].coming_soon is True
    assert by_id["weaviate"].env_variables is not None and len(by_id["weaviate"].env_variables) == 5
    assert all(e.extra == {} for e in parsed.entries)


def test_dev_registry_keeps_its_12_desktop_only_services_as_unsupported() -> None:
    parsed = parse_document(registry("prem-registry-dev-manifests.json"), "dev")
    assert len(parsed.entries) == 47
    assert parsed.skipped == []
    assert parsed.unsupported == 12
    binary = [e.manifest for e in parsed.entries if e.manifest.docker_images is None]
    assert len(binary) == 12
    assert all(m.service_type == "binary" and not m.is_docker() for m in binary)
    assert all(m.binaries_url and m.serve_command and m.weights_files for m in binary)
    petals = [e.manifest for e in parsed.entries if e.manifest.petals]
    assert len(petals) == 4 and all(m.petals_id for m in petals)


def test_mock_registry_loads_its_8_services() -> None:
    parsed = parse_document(registry("prem-daemon-mock-manifests.json"), "mock")
    assert [e.manifest.id for e in parsed.entries][:3] == ["chat-mock-small", "chat-mock-medium", "chat-mock-large"]
    assert len(parsed.entries) == 8 and parsed.skipped == []


def test_v1_registry_loads() -> None:
    parsed = parse_document(registry("prem-registry-v1-manifests.json"), "v1")
    assert (len(parsed.entries), parsed.unsupported, parsed.skipped) == (28, 8, [])


def test_a_bad_entry_is_skipped_with_index_id_and_reason_and_the_rest_load() -> None:
    main = json.loads(registry("prem-registry-main-manifests.json"))
    no_images = docker(id="no-images")
    del no_images["dockerImages"]
    document = [
        main[0],
        no_images,
        docker(id="wrong-port", defaultPort="8000"),
        docker(id="bad image", name="x"),
        {"name": "no id"},
        42,
        docker(id="wrong-nested", dockerImages={"gpu": {"size": 1}}),
        docker(id="bad-memory", modelInfo={"memoryRequirements": "lots"}),
        main[1],
        main[0],
    ]
    parsed = parse_document(json.dumps(document).encode(), "x")
    assert [e.manifest.id for e in parsed.entries] == [main[0]["id"], main[1]["id"]]
    skipped = [(s.index, s.id, s.reason) for s in parsed.skipped]
    assert skipped == [
        (1, "no-images", 'dockerImages: missing (required unless serviceType is "binary")'),
        (2, "wrong-port", "defaultPort: expected an integer or null, got a string"),
        (3, "bad image", skipped[2][2]),
        (4, None, "id: missing"),
        (5, None, "expected a JSON object, got a number"),
        (6, "wrong-nested", "dockerImages.gpu.image: missing"),
        (7, "bad-memory", "modelInfo.memoryRequirements: expected a whole number of MiB, got 'lots'"),
        (9, main[0]["id"], "id: duplicate of entry 0 in the same registry"),
    ]
    assert skipped[2][2].startswith("id: 'bad image' is not a valid service id")


def test_unknown_keys_are_tolerated_and_kept() -> None:
    parsed = parse_document(json.dumps([docker(futureKey={"a": 1}, anotherOne=[1, 2])]).encode(), "x")
    assert parsed.entries[0].extra == {"futureKey": {"a": 1}, "anotherOne": [1, 2]}


@pytest.mark.parametrize(
    ("body", "message"),
    [(b"<html>oops</html>", "not JSON"), (b'{"id": "x"}', "not a JSON array (got an object)"), (b"", "not JSON")],
)
def test_a_document_that_is_not_a_json_array_is_refused_whole(body: bytes, message: str) -> None:
    with pytest.raises(DocumentError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_document(body, "x")


def test_custom_services_need_premds_service_input_fields() -> None:
    for field in CUSTOM_REQUIRED:
        raw = docker()
        del raw[field]
        with pytest.raises(EntryError) as caught:
            check_entry(raw, "custom", CUSTOM_REQUIRED)
        assert caught.value.field == field
    entry = check_entry(docker(), "custom", CUSTOM_REQUIRED)
    assert entry.origin == "custom"


def test_an_entry_survives_a_round_trip_through_the_wire() -> None:
    parsed = parse_document(registry("prem-registry-dev-manifests.json"), "dev")
    for entry in parsed.entries:
        again = msgspec.json.decode(msgspec.json.encode(entry), type=CatalogEntry)
        assert again == entry
        assert msgspec.json.decode(msgspec.json.encode(entry.manifest), type=Manifest) == entry.manifest


def test_a_garbage_document_reports_the_first_skips_and_counts_the_rest() -> None:
    """A huge array of junk must not turn into a huge report (it is published in the catalog's meta)."""
    parsed = parse_document(b"[" + b",".join([b"0"] * 5000) + b"]", "http://r")
    assert parsed.entries == [] and parsed.skipped_total == 5000
    assert len(parsed.skipped) == MAX_REPORTED_SKIPS and parsed.skipped[-1].index == MAX_REPORTED_SKIPS - 1
