"""Stats in premd's shapes, image and volume removal, stop-all and a prune that only touches premd's own things."""

from __future__ import annotations

import contextlib
import uuid

import aiodocker
import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from common import bus, subjects
from common.errors import AppError
from common.messages import (
    Ack,
    ContainerStatsList,
    Empty,
    GetContainerStats,
    GpuInfo,
    GPUStats,
    OSStats,
    RemoveImage,
    RemoveVolume,
)
from common.settings import Settings
from tests.support.scheduler_bed import (
    FakeGpus,
    cleanup_service,
    new_service_id,
    observed,
    put_catalog,
    ref_manifest,
    running_scheduler,
    start_and_wait,
    wait_observed,
)
from tests.testbed.containers import ContainerFactory
from tests.testbed.images import build_image
from tests.testbed.oci_registry import OciRegistry
from tests.testbed.util import free_port

pytestmark = pytest.mark.docker


async def _exists(docker: aiodocker.Docker, container_id: str) -> bool:
    try:
        await docker.containers.container(container_id).show()
    except aiodocker.DockerError as exc:
        if exc.status == 404:
            return False
        raise
    return True


async def test_stats_stop_all_and_prune(
    nc: NATS,
    js: JetStreamContext,
    settings: Settings,
    docker: aiodocker.Docker,
    ref_image: str,
    make_container: ContainerFactory,
) -> None:
    sid = new_service_id()
    await put_catalog(js, ref_manifest(sid, ref_image, defaultExternalPort=free_port()))
    gpu = GpuInfo(index=0, uuid="GPU-x", name="Fake", memory_total_mib=8192, memory_free_mib=6144, memory_used_mib=2048)
    try:
        async with running_scheduler(settings, gpu_probe=FakeGpus([gpu])) as scheduler:
            await wait_observed(js, sid, lambda s: s.downloaded)
            assert (await start_and_wait(nc, js, sid)).type == "succeeded"

            stats = await bus.request(
                nc, subjects.SCHEDULER_CONTAINER_STATS, GetContainerStats(service_id=sid), ContainerStatsList, 10
            )
            (one,) = stats.stats
            assert one.id == sid and one.memory_limit > 0 and one.storage_limit > 0
            everything = await bus.request(
                nc, subjects.SCHEDULER_CONTAINER_STATS, GetContainerStats(), ContainerStatsList, 10
            )
            assert sid in [s.id for s in everything.stats]
            host = await bus.request(nc, subjects.SCHEDULER_HOST_STATS, Empty(), OSStats, 5)
            assert host.memory_limit > 0 and 0 <= host.storage_percentage <= 100
            gpus = await bus.request(nc, subjects.SCHEDULER_GPU_STATS, Empty(), GPUStats, 5)
            assert gpus.gpus is not None and gpus.gpus[0].gpu_name == "Fake" and gpus.free_memory == 6.0

            # Someone else's stopped container, and a stopped one of another premd: prune leaves both.
            foreign = await make_container(ref_image, cmd=["true"], start=False)
            other_labels = {"io.premd.managed": "true", "io.premd.instance": "another", "io.premd.service": sid}
            other_premd = await make_container(ref_image, labels=other_labels, start=False)

            stopped = await bus.request(nc, subjects.SCHEDULER_STOP_ALL, Empty(), Ack, 30)
            assert stopped.message == "Stopped 1 services."
            state = await observed(js, sid)
            assert state is not None and not state.running
            with pytest.raises(AppError) as not_running:
                await bus.request(
                    nc, subjects.SCHEDULER_CONTAINER_STATS, GetContainerStats(service_id=sid), ContainerStatsList, 10
                )
            assert not_running.value.code == "service.not_running"

            # A stopped container of this premd (kept after a failed start, say) is pruned.
            labels = {"io.premd.managed": "true", "io.premd.instance": scheduler.instance, "io.premd.service": sid}
            mine = await make_container(ref_image, labels=labels, start=False, name=f"{sid}-old")
            pruned = await bus.request(nc, subjects.SCHEDULER_PRUNE, Empty(), Ack, 30)
            assert pruned.message.startswith("Pruned ")
            assert not await _exists(docker, mine.id)
            assert await _exists(docker, other_premd.id) and await _exists(docker, foreign.id)
    finally:
        await cleanup_service(docker, sid)


async def test_remove_image_and_volume(
    nc: NATS, js: JetStreamContext, settings: Settings, docker: aiodocker.Docker, ref_image: str
) -> None:
    sid = new_service_id()
    tag = f"premd-test/remove-{uuid.uuid4().hex[:8]}:1"
    await docker.images.tag(ref_image, tag.split(":")[0], tag="1")
    await put_catalog(js, ref_manifest(sid, tag))
    foreign_volume = f"not-premd-{uuid.uuid4().hex[:8]}"
    await docker.volumes.create({"Name": foreign_volume})  # type: ignore[no-untyped-call]
    premd_volume = f"prem-{sid}-data"
    await docker.volumes.create({"Name": premd_volume})  # type: ignore[no-untyped-call]
    try:
        async with running_scheduler(settings):
            await wait_observed(js, sid, lambda s: s.downloaded)
            removed = await bus.request(nc, subjects.SCHEDULER_REMOVE_IMAGE, RemoveImage(service_id=sid), Ack, 10)
            assert removed.message == f"Image {tag} removed."
            state = await observed(js, sid)  # the listing knows before the reply
            assert state is not None and not state.downloaded and state.downloaded_image is None
            again = await bus.request(nc, subjects.SCHEDULER_REMOVE_IMAGE, RemoveImage(service_id=sid), Ack, 10)
            assert again.message == f"Image {tag} not found."

            with pytest.raises(AppError) as refused:
                await bus.request(nc, subjects.SCHEDULER_REMOVE_VOLUME, RemoveVolume(name=foreign_volume), Ack, 10)
            assert refused.value.code == "bad_request"
            gone = await bus.request(nc, subjects.SCHEDULER_REMOVE_VOLUME, RemoveVolume(name=premd_volume), Ack, 10)
            assert gone.message == f"Volume {premd_volume} removed."
            missing = await bus.request(nc, subjects.SCHEDULER_REMOVE_VOLUME, RemoveVolume(name=premd_volume), Ack, 10)
            assert missing.message == f"Volume {premd_volume} not found."
    finally:
        await cleanup_service(docker, sid)
        with contextlib.suppress(aiodocker.DockerError):
            await docker.images.delete(tag, force=True)
        with contextlib.suppress(aiodocker.DockerError):
            async with docker._query(f"volumes/{foreign_volume}", method="DELETE"):
                pass


async def _build(docker: aiodocker.Docker, base_image: str, tag: str, content: str) -> None:
    files = {"Dockerfile": f"FROM {base_image}\nCOPY marker /marker\n".encode(), "marker": content.encode()}
    await build_image(docker, tag, files)


async def _image_ids(docker: aiodocker.Docker) -> set[str]:
    return {image["Id"] for image in await docker.images.list(all=True)}


async def test_prune_removes_replaced_catalog_images_only(
    nc: NATS,
    js: JetStreamContext,
    settings: Settings,
    docker: aiodocker.Docker,
    base_image: str,
    oci_registry: OciRegistry,
) -> None:
    """An old version of a catalog image (untagged by a newer pull) is pruned; the host's own dangling image is not."""
    sid, suffix = new_service_id(), uuid.uuid4().hex[:8]
    local, foreign = f"premd-test/prune-{suffix}:1", f"premd-test/foreign-{suffix}:1"
    remote = foreign_old = old = ""
    try:
        # Content unique to this run: the build cache would otherwise hand every run the same image, whose
        # repository digests pile up across runs and make it undeletable without force.
        await _build(docker, base_image, local, f"v1 {suffix}")
        remote = await oci_registry.push(docker, local)
        await docker.images.delete(local)
        await docker.images.pull(remote)
        old = (await docker.images.inspect(remote))["Id"]
        await _build(docker, base_image, local, f"v2 {suffix}")  # a new version under the same tag, pulled over the old
        await oci_registry.push(docker, local)
        await docker.images.pull(remote)
        assert (await docker.images.inspect(remote))["Id"] != old
        await _build(docker, base_image, foreign, f"mine {suffix}")
        foreign_old = (await docker.images.inspect(foreign))["Id"]
        await _build(docker, base_image, foreign, f"mine, rebuilt {suffix}")  # the host's own dangling image
        await put_catalog(js, ref_manifest(sid, remote))
        async with running_scheduler(settings):
            pruned = await bus.request(nc, subjects.SCHEDULER_PRUNE, Empty(), Ack, 30)
        assert pruned.message.startswith("Pruned ") and " 1 images" in pruned.message
        ids = await _image_ids(docker)
        assert old not in ids and foreign_old in ids
        assert (await docker.images.inspect(remote))["Id"] in ids
    finally:
        for ref in (remote, local, foreign, foreign_old, old):
            if ref:
                with contextlib.suppress(aiodocker.DockerError):
                    await docker.images.delete(ref, force=True)
