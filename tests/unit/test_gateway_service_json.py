"""premd's Service JSON from catalog entry + observed state + host facts (gateway/service_json.py): pure."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest

from common.manifest import Manifest
from common.messages import CatalogEntry, GpuInfo, HostFacts, ServiceState
from gateway.interface_texts import INTERFACES
from gateway.schemas import Service
from gateway.service_json import proxy_base_url, service_json
from tests.testbed.registries import REGISTRIES_DIR

DATA = REGISTRIES_DIR
GIB = 1024**3
BASE = "http://localhost:54321/proxy/x"

# premd's ServiceResponse keys, in the order it emitted them.
PREMD_KEYS = [
    "id", "name", "description", "documentation", "icon", "modelInfo", "interfaces", "dockerImage",
    "dockerImageSize", "defaultPort", "defaultExternalPort", "runningPort", "command", "volumePath",
    "volumeName", "running", "downloaded", "downloadedDockerImage", "needsUpdate", "supported", "enoughMemory",
    "enoughSystemMemory", "enoughStorage", "beta", "comingSoon", "envVariables", "execCommands",
    "promptTemplate", "baseUrl",
]  # fmt: skip


def _manifests(name: str) -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = json.loads((DATA / name).read_text())
    return data


def _entry(raw: dict[str, Any]) -> CatalogEntry:
    return CatalogEntry(manifest=msgspec.convert(raw, Manifest), origin="test")


def _facts(*, gpus: list[GpuInfo] | None = None, free_gib: float = 16, total_gib: float = 32) -> HostFacts:
    return HostFacts(
        gpus=gpus or [],
        memory_total_bytes=int(total_gib * GIB),
        memory_available_bytes=int(free_gib * GIB),
        disk_free_bytes=100 * GIB,
        disk_total_bytes=500 * GIB,
        docker_available=True,
        updated_at=0.0,
    )


def _encoded(service: Service) -> dict[str, Any]:
    decoded: dict[str, Any] = json.loads(msgspec.json.encode(service))
    return decoded


MOCK = {
    "id": "svc-a",
    "name": "Svc A",
    "modelInfo": {"memoryRequirements": 512},
    "interfaces": ["chat"],
    "dockerImages": {"cpu": {"image": "127.0.0.1:5000/x/a:1", "size": 1000}, "gpu": {"image": "x/a-gpu:1", "size": 9}},
    "defaultPort": 8000,
    "defaultExternalPort": 8001,
    "volumePath": "/data",
    "envVariables": ["A=1"],
    "execCommands": ["touch x"],
    "banner": "not returned",
}


def test_keys_are_premds_29_in_order() -> None:
    body = _encoded(service_json(_entry(MOCK), None, _facts(), BASE))
    assert list(body) == PREMD_KEYS
    assert len(PREMD_KEYS) == 29


def test_never_seen_by_the_scheduler_is_stopped_and_not_downloaded() -> None:
    body = _encoded(service_json(_entry(MOCK), None, _facts(), BASE))
    assert body["running"] is False and body["runningPort"] is None and body["volumeName"] is None
    assert body["downloaded"] is False and body["downloadedDockerImage"] is None and body["needsUpdate"] is False
    assert body["dockerImage"] == "127.0.0.1:5000/x/a:1" and body["dockerImageSize"] == 1000
    assert body["supported"] is True
    assert body["modelInfo"] == {"memoryRequirements": 512}
    assert body["envVariables"] == ["A=1"] and body["execCommands"] == ["touch x"]
    assert body["baseUrl"] == BASE
    assert body["command"] is None and body["promptTemplate"] is None and body["beta"] is False


def test_running_service_reports_port_and_volume() -> None:
    state = ServiceState(
        service_id="svc-a",
        phase="ready",
        running=True,
        ready=True,
        host_port=28111,
        volume_name="prem-svc-a-data",
        downloaded=True,
        downloaded_image="127.0.0.1:5000/x/a:1",
    )
    body = _encoded(service_json(_entry(MOCK), state, _facts(), BASE))
    assert body["running"] is True and body["runningPort"] == 28111 and body["volumeName"] == "prem-svc-a-data"
    assert body["downloaded"] is True and body["downloadedDockerImage"] == "127.0.0.1:5000/x/a:1"


def test_no_stale_fields_after_stop_or_image_removal() -> None:
    """runningPort / volumeName / downloadedDockerImage / needsUpdate never outlive what they describe (premd's did:
    docs/http-api.md, deviation 2)."""
    stopped = ServiceState(
        service_id="svc-a",
        running=False,
        host_port=28111,
        volume_name="prem-svc-a-data",
        downloaded=False,
        downloaded_image="x/a:0",
        needs_update=True,
    )
    body = _encoded(service_json(_entry(MOCK), stopped, _facts(), BASE))
    assert body["runningPort"] is None and body["volumeName"] is None
    assert body["downloadedDockerImage"] is None and body["needsUpdate"] is False


def test_needs_update_when_an_older_tag_is_local() -> None:
    state = ServiceState(
        service_id="svc-a", downloaded=True, downloaded_image="127.0.0.1:5000/x/a:0", needs_update=True
    )
    body = _encoded(service_json(_entry(MOCK), state, _facts(), BASE))
    assert body["needsUpdate"] is True and body["downloadedDockerImage"] == "127.0.0.1:5000/x/a:0"


def test_gpu_host_selects_the_gpu_image() -> None:
    gpu = GpuInfo(index=0, uuid="GPU-1", name="T4", memory_total_mib=16000, memory_free_mib=100, memory_used_mib=0)
    body = _encoded(service_json(_entry(MOCK), None, _facts(gpus=[gpu]), BASE))
    assert body["dockerImage"] == "x/a-gpu:1" and body["dockerImageSize"] == 9
    assert body["enoughMemory"] is False and body["enoughSystemMemory"] is True


def test_memory_flags_follow_fit() -> None:
    raw = {**MOCK, "modelInfo": {"memoryRequirements": 40 * 1024}}
    body = _encoded(service_json(_entry(raw), None, _facts(free_gib=16, total_gib=32), BASE))
    assert body["enoughMemory"] is False and body["enoughSystemMemory"] is False
    running = ServiceState(service_id="svc-a", running=True, host_port=1)
    assert _encoded(service_json(_entry(raw), running, _facts(), BASE))["enoughMemory"] is True


def test_unknown_host_facts_claim_nothing_missing() -> None:
    body = _encoded(service_json(_entry(MOCK), None, None, BASE))
    assert body["enoughMemory"] and body["enoughSystemMemory"] and body["enoughStorage"]
    assert body["dockerImage"] == "127.0.0.1:5000/x/a:1"


def test_binary_manifests_are_listed_unsupported() -> None:
    """premd 500ed on manifests without dockerImages; they are listed as unsupported (docs/http-api.md, deviation 5)."""
    binaries = [raw for raw in _manifests("prem-registry-dev-manifests.json") if "dockerImages" not in raw]
    assert binaries
    for raw in binaries:
        body = _encoded(service_json(_entry(raw), None, _facts(), BASE))
        assert list(body) == PREMD_KEYS
        assert body["supported"] is False and body["dockerImage"] == "" and body["dockerImageSize"] == 0
        assert isinstance(body["modelInfo"], dict)


@pytest.mark.parametrize(
    "name",
    [
        "prem-registry-main-manifests.json",
        "prem-registry-dev-manifests.json",
        "prem-registry-v1-manifests.json",
        "prem-daemon-mock-manifests.json",
    ],
)
def test_every_real_manifest_maps(name: str) -> None:
    for raw in _manifests(name):
        body = _encoded(service_json(_entry(raw), None, _facts(), proxy_base_url("http", "h:1", raw["id"])))
        assert list(body) == PREMD_KEYS
        assert body["id"] == raw["id"] and body["interfaces"] == raw["interfaces"]
        assert body["baseUrl"] == f"http://h:1/proxy/{raw['id']}"
        assert body["modelInfo"] == raw.get("modelInfo", {})


def test_interfaces_are_premds_eight_in_order() -> None:
    assert [i.id for i in INTERFACES] == [
        "chat", "embeddings", "vector-store", "coder", "diffuser", "upscaler", "text-to-audio", "audio-to-text",
    ]  # fmt: skip
    assert [i.playground for i in INTERFACES] == [True, False, False, False, True, True, True, True]
    assert INTERFACES[0].documentation == "\n# Chat\n        "
    assert INTERFACES[4].documentation == "\n        # Prem Diffuser\n        "
    assert INTERFACES[6].icon == "https://static.premai.io/daemon/interfaces/tta.svg"
    assert list(json.loads(msgspec.json.encode(INTERFACES[0]))) == ["id", "name", "playground", "documentation", "icon"]
