"""Without a Docker engine the scheduler still starts, says so in the host facts, and refuses with a code."""

from __future__ import annotations

import aiodocker
import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from common import bus, subjects
from common.errors import AppError
from common.jetstream import kv_bucket, kv_get
from common.messages import HostFacts, OperationAccepted, PullImage, StartService
from common.settings import Settings
from scheduler.component import Scheduler
from scheduler.docker_driver import DockerDriver
from tests.support.bus_users import connect_as
from tests.support.scheduler_bed import Events, FakeGpus, new_service_id, put_catalog, ref_manifest


async def test_docker_away(nc: NATS, js: JetStreamContext, settings: Settings) -> None:
    sid = new_service_id()
    await put_catalog(js, ref_manifest(sid, "premd-test/anything:1"))
    own = await connect_as(settings, subjects.SCHEDULER)
    driver = DockerDriver(aiodocker.Docker(url="unix:///nonexistent/docker.sock"))
    scheduler = Scheduler(settings, own, gpu_probe=FakeGpus([]), driver=driver)
    await scheduler.start()
    await own.flush()
    try:
        facts, _ = await kv_get(await kv_bucket(js, subjects.KV_HOST), subjects.HOST_FACTS_KEY, HostFacts)
        assert facts is not None and facts.docker_available is False
        with pytest.raises(AppError) as refused:
            await bus.request(nc, subjects.SCHEDULER_START, StartService(service_id=sid), OperationAccepted, 5)
        assert refused.value.code == "docker.unavailable"
        events = await Events.of_service(js, sid)
        accepted = await bus.request(nc, subjects.SCHEDULER_PULL, PullImage(service_id=sid), OperationAccepted, 5)
        final = await events.final(accepted.operation_id, timeout=10)
        assert final.type == "failed" and final.error_code == "docker.unavailable"
        await events.close()
    finally:
        await scheduler.stop()
        await own.close()
