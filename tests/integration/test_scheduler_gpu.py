"""GPU services with an injected inventory (no GPU here): device requests by UUID, GPU fit refusals."""

from __future__ import annotations

import aiodocker
import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from common import bus, subjects
from common.errors import FitError
from common.messages import GpuInfo, OperationAccepted, StartService
from common.settings import Settings
from scheduler.docker_driver import DockerDriver
from tests.support.scheduler_bed import (
    FakeGpus,
    cleanup_service,
    new_service_id,
    put_catalog,
    ref_manifest,
    running_scheduler,
    wait_observed,
)

pytestmark = pytest.mark.docker


def _gpu(index: int, free_mib: int) -> GpuInfo:
    return GpuInfo(
        index=index,
        uuid=f"GPU-fake-{index}",
        name="Fake GPU",
        memory_total_mib=24576,
        memory_free_mib=free_mib,
        memory_used_mib=24576 - free_mib,
    )


async def test_gpu_image_container_requests_the_chosen_gpu_by_uuid(
    nc: NATS, js: JetStreamContext, settings: Settings, docker: aiodocker.Docker, ref_image: str
) -> None:
    sid, too_big = new_service_id(), new_service_id()
    images = {"gpu": {"image": ref_image}, "cpu": {"image": "premd-test/cpu-variant:1"}}
    manifest = ref_manifest(sid, ref_image, dockerImages=images, modelInfo={"memoryRequirements": 8000})
    huge = ref_manifest(too_big, ref_image, dockerImages=images, modelInfo={"memoryRequirements": 24576})
    await put_catalog(js, manifest, huge)
    inventory = FakeGpus([_gpu(0, free_mib=2000), _gpu(1, free_mib=20000)])
    try:
        async with running_scheduler(settings, gpu_probe=inventory) as scheduler:
            state = await wait_observed(js, sid, lambda s: s.downloaded)
            assert state.downloaded_image == ref_image  # the GPU variant was selected for this host

            gpus = scheduler.ops.place(manifest, gpu=True, force=False)
            assert [g.uuid for g in gpus] == ["GPU-fake-1"]
            spec = scheduler.ops.container_spec("op-gpu", manifest, ref_image, gpus, 1, None, None)

            with pytest.raises(FitError) as refused:
                await bus.request(nc, subjects.SCHEDULER_START, StartService(service_id=too_big), OperationAccepted, 5)
            assert refused.value.code == "fit.gpu_memory"
            assert refused.value.message == "needs 24576 MiB GPU memory, best GPU has 20000 MiB free"
        # Created (never started: no NVIDIA runtime here) once the scheduler is gone, so that its
        # reconcile does not reap the undesired container while it is looked at.
        driver = DockerDriver()
        try:
            container_id = await driver.create(spec)
        finally:
            await driver.close()
        info = await docker.containers.container(container_id).show()
        (request,) = info["HostConfig"]["DeviceRequests"]
        assert request["DeviceIDs"] == ["GPU-fake-1"]
        assert request["Capabilities"] == [["gpu"]]
        assert info["Config"]["Labels"]["io.premd.gpus"] == "GPU-fake-1"
        assert info["State"]["Status"] == "created"
    finally:
        await cleanup_service(docker, sid)
        await cleanup_service(docker, too_big)
