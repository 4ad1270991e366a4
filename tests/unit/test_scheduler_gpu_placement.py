"""GPU placement over inventories (none, one, two with different free memory) and the device requests made."""

from __future__ import annotations

import msgspec
import pytest

from common.errors import FitError
from common.fit import check_memory, place_gpus, select_image
from common.manifest import Manifest
from common.messages import GpuInfo, HostFacts
from scheduler.docker_driver import ContainerSpec, container_config

GIB = 1024**3


def _gpu(index: int, free_mib: int, total_mib: int = 24576) -> GpuInfo:
    return GpuInfo(
        index=index,
        uuid=f"GPU-{index}",
        name="Fake",
        memory_total_mib=total_mib,
        memory_free_mib=free_mib,
        memory_used_mib=total_mib - free_mib,
    )


def _manifest(need_mib: int | None, *, gpu: bool = True, cpu: bool = True) -> Manifest:
    images = {}
    if gpu:
        images["gpu"] = {"image": "svc:gpu"}
    if cpu:
        images["cpu"] = {"image": "svc:cpu"}
    model = {"memoryRequirements": need_mib} if need_mib is not None else {}
    raw = {"id": "s", "name": "S", "interfaces": ["chat"], "modelInfo": model, "dockerImages": images}
    return msgspec.convert(raw, Manifest)


def _facts(gpus: list[GpuInfo]) -> HostFacts:
    return HostFacts(
        gpus=gpus,
        memory_total_bytes=16 * GIB,
        memory_available_bytes=8 * GIB,
        disk_free_bytes=100 * GIB,
        disk_total_bytes=200 * GIB,
        docker_available=True,
        updated_at=0.0,
    )


def test_no_gpu_places_nothing_and_selects_the_cpu_image() -> None:
    assert place_gpus(_manifest(4096), []) == []
    image, gpu = select_image(_manifest(4096), _facts([]))
    assert image is not None and image.image == "svc:cpu" and not gpu


def test_one_gpu_that_fits() -> None:
    gpu = _gpu(0, free_mib=8000)
    assert place_gpus(_manifest(4096), [gpu]) == [gpu]
    image, is_gpu = select_image(_manifest(4096), _facts([gpu]))
    assert image is not None and image.image == "svc:gpu" and is_gpu


def test_one_gpu_too_small_is_refused_with_the_numbers() -> None:
    gpu = _gpu(0, free_mib=7900)
    assert place_gpus(_manifest(24576), [gpu]) == []
    with pytest.raises(FitError) as err:
        check_memory(_manifest(24576), _facts([gpu]))
    assert err.value.code == "fit.gpu_memory"
    assert err.value.message == "needs 24576 MiB GPU memory, best GPU has 7900 MiB free"


def test_two_gpus_choose_the_one_with_enough_free_memory() -> None:
    busy, free = _gpu(0, free_mib=2000), _gpu(1, free_mib=20000)
    assert place_gpus(_manifest(16000), [busy, free]) == [free]
    assert place_gpus(_manifest(1000), [busy, free]) == [free]  # most free memory first


def test_free_and_total_are_not_swapped() -> None:
    # premd compared total where it meant free: a full 24 GiB card must not fit a 16 GiB model
    full = _gpu(0, free_mib=1000, total_mib=24576)
    with pytest.raises(FitError):
        check_memory(_manifest(16000), _facts([full]))


def test_cpu_image_gets_no_device_request_and_gpu_image_gets_its_uuid_only() -> None:
    spec = ContainerSpec(name="s", image="svc:cpu", instance="i", service_id="s", operation_id="op", generation=1)
    assert "DeviceRequests" not in container_config(spec)["HostConfig"]
    gpu_spec = msgspec.structs.replace(spec, image="svc:gpu", gpu_uuids=["GPU-1"])
    (request,) = container_config(gpu_spec)["HostConfig"]["DeviceRequests"]
    assert request["DeviceIDs"] == ["GPU-1"] and request["Capabilities"] == [["gpu"]] and request["Count"] == 0
