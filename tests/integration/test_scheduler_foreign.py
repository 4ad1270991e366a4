"""Containers premd did not make (issue 9, defects 3 and 10): a user's own ``docker run --name <service id>``
is neither adopted nor removed, and a start that meets one (or another premd's) reports the name conflict."""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import aiodocker
import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from common import bus, subjects
from common.errors import AppError
from common.jetstream import kv_bucket, kv_get
from common.messages import Ack, DesiredState, Empty, ServiceStopped, StopService
from common.settings import Settings
from scheduler.component import Scheduler
from tests.support.scheduler_bed import (
    cleanup_service,
    containers_of,
    new_service_id,
    put_catalog,
    ref_manifest,
    running_scheduler,
    start_and_wait,
    wait_observed,
)
from tests.testbed.containers import ContainerFactory
from tests.testbed.util import free_port, wait_until

pytestmark = pytest.mark.docker


async def docker_run(*args: str) -> str:
    """``docker run -d ...`` as a user types it; returns the container id."""
    proc = await asyncio.create_subprocess_exec(
        "docker", "run", "-d", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    return out.decode().strip()


async def passes_done(scheduler: Scheduler, more: int) -> None:
    """Wait until the reconciler completed ``more`` passes from now (a kick starts one at once)."""
    target = scheduler.reconciler.passes + more
    scheduler.reconciler.kick()

    async def done() -> bool:
        return scheduler.reconciler.passes >= target

    await wait_until(done, what=f"{more} reconcile passes")


async def state_of(docker: aiodocker.Docker, container_id: str) -> str:
    info = await docker.containers.container(container_id).show()
    return str(info["State"]["Status"])


async def test_a_users_container_named_after_a_service_is_left_alone(
    nc: NATS, js: JetStreamContext, settings: Settings, docker: aiodocker.Docker, ref_image: str, base_image: str
) -> None:
    sid = new_service_id("qdrant")
    await put_catalog(js, ref_manifest(sid, ref_image, defaultExternalPort=free_port()))
    foreign = await docker_run("--name", sid, base_image, "sleep", "infinity")
    try:
        async with running_scheduler(settings) as scheduler:
            await passes_done(scheduler, 2)
            desired, _ = await kv_get(await kv_bucket(js, subjects.KV_DESIRED), sid, DesiredState)
            assert desired is None or not desired.running  # not adopted: its image is not the service's
            stopped = await bus.request(nc, subjects.SCHEDULER_STOP_ALL, Empty(), Ack, 30)
            assert stopped.message == "Stopped 0 services."
            with pytest.raises(AppError) as refused:
                await bus.request(nc, subjects.SCHEDULER_STOP, StopService(service_id=sid), ServiceStopped, 10)
            assert refused.value.code == "service.not_running"
            await passes_done(scheduler, 1)
            assert await state_of(docker, foreign) == "running"
    finally:
        with contextlib.suppress(aiodocker.DockerError):
            await docker.containers.container(foreign).delete(force=True)
        await cleanup_service(docker, sid)


async def test_stop_refuses_an_id_not_in_the_catalog(
    nc: NATS, js: JetStreamContext, settings: Settings, docker: aiodocker.Docker, base_image: str
) -> None:
    """Even when a container of that name runs: premd.scheduler.stop is about premd's services only."""
    name = f"not-a-service-{uuid.uuid4().hex[:8]}"
    foreign = await docker_run("--name", name, base_image, "sleep", "infinity")
    try:
        async with running_scheduler(settings):
            with pytest.raises(AppError) as refused:
                await bus.request(nc, subjects.SCHEDULER_STOP, StopService(service_id=name), ServiceStopped, 10)
            assert refused.value.code == "service.not_found" and name in refused.value.message
            assert await state_of(docker, foreign) == "running"
    finally:
        with contextlib.suppress(aiodocker.DockerError):
            await docker.containers.container(foreign).delete(force=True)


async def test_name_conflicts_are_reported_and_a_wiped_premds_container_is_its_own(
    nc: NATS,
    js: JetStreamContext,
    settings: Settings,
    docker: aiodocker.Docker,
    ref_image: str,
    base_image: str,
    make_container: ContainerFactory,
) -> None:
    """Defect 10: a user's container, and a second premd's, holding a service's name: the start fails with
    ``container.name_taken`` saying who holds it, and nothing is touched. A container this premd made
    before its data was wiped (another instance id, the same home) is its own again: the start replaces it."""
    users, second, wiped = new_service_id("users"), new_service_id("second"), new_service_id("wiped")
    await put_catalog(
        js, *(ref_manifest(s, ref_image, defaultExternalPort=free_port()) for s in (users, second, wiped))
    )
    theirs = {"io.premd.managed": "true", "io.premd.instance": "another-premd", "io.premd.home": "/elsewhere"}
    before = {
        "io.premd.managed": "true",
        "io.premd.instance": "wiped-instance",
        "io.premd.home": settings.data_dir,  # absolute (tmp_path): premd serve's home: its data dir
    }
    holders = {
        users: (await make_container(base_image, cmd=["sleep", "infinity"], name=users)).id,
        second: (await make_container(ref_image, labels={**theirs, "io.premd.service": second}, name=second)).id,
        wiped: (await make_container(ref_image, labels={**before, "io.premd.service": wiped}, name=wiped)).id,
    }
    try:
        async with running_scheduler(settings, embedded=True):
            outcome = {}
            for sid in (users, second, wiped):
                await wait_observed(js, sid, lambda s: s.downloaded)
                outcome[sid] = await start_and_wait(nc, js, sid)
        for sid, words in ((users, base_image), (second, "another premd")):
            final = outcome[sid]
            assert final.type == "failed" and final.error_code == "container.name_taken", final
            assert words in (final.message or "") and f"docker rm -f {sid}" in (final.message or ""), final
            assert await state_of(docker, holders[sid]) == "running"
        assert outcome[wiped].type == "succeeded", outcome[wiped]
        (now,) = await containers_of(docker, wiped)
        assert now["Id"] != holders[wiped] and now["Labels"]["io.premd.home"] == before["io.premd.home"]
    finally:
        for sid in (users, second, wiped):
            await cleanup_service(docker, sid)
