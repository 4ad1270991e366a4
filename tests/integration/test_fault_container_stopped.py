"""A service's container stopped behind premd's back (``docker stop``, ``docker kill``; issue 9 fault suite): premd
reports it as documented (observed state and a ``state`` event with the exit code: a crash of a service that
should run), then converges: the service is started again, once, and is ready in a new container."""

from __future__ import annotations

from collections.abc import Callable

import aiodocker
import msgspec
import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from common import bus, subjects
from common.messages import OperationAccepted, ServiceState, StartService
from common.settings import Settings
from tests.support.scheduler_bed import (
    Events,
    cleanup_service,
    containers_of,
    new_service_id,
    put_catalog,
    ref_manifest,
    running_scheduler,
    wait_observed,
)
from tests.testbed.util import free_port

pytestmark = pytest.mark.docker


def replaced(old: str) -> Callable[[ServiceState], bool]:
    return lambda s: s.ready and s.container_id not in (None, old)


async def test_a_container_stopped_or_killed_behind_premds_back_is_reported_and_restarted(
    nc: NATS, js: JetStreamContext, settings: Settings, docker: aiodocker.Docker, ref_image: str
) -> None:
    stopped, killed = new_service_id("dstop"), new_service_id("dkill")
    await put_catalog(js, *(ref_manifest(s, ref_image, defaultExternalPort=free_port()) for s in (stopped, killed)))
    # No relist in the test's time: the deaths must be seen from Docker's events (the engine's list still says
    # "running" for a while after "die"; a crash used to wait for the next relist to be seen).
    fast = msgspec.structs.replace(settings, crash_backoff_s=0.2, crash_backoff_max_s=1.0, reconcile_interval_s=3600)
    try:
        async with running_scheduler(fast):
            before = {}
            for sid in (stopped, killed):
                events = await Events.of_service(js, sid)
                accepted = await bus.request(
                    nc, subjects.SCHEDULER_START, StartService(service_id=sid), OperationAccepted, 10
                )
                assert (await events.final(accepted.operation_id, timeout=60)).type == "succeeded"
                await events.close()
                state = await wait_observed(js, sid, lambda s: s.ready)
                assert state.container_id
                before[sid] = state.container_id

            followers = {sid: await Events.of_service(js, sid) for sid in (stopped, killed)}
            for sid, code in ((stopped, None), (killed, 137)):  # one at a time: no other event wakes the scheduler
                container = docker.containers.container(before[sid])
                await (container.stop(t=5) if code is None else container.kill())  # SIGTERM (then SIGKILL), SIGKILL
                report = await followers[sid].until(lambda e: e.type == "state" and e.phase == "failed", timeout=60)
                assert report.kind == "reconcile" and report.exit_code is not None, report
                if code is not None:
                    assert report.exit_code == code, report
                assert f"Service {sid} crashed: exit code {report.exit_code}" in (report.message or ""), report
                # Converged: started again by reconcile, ready in a new container, the restart counted.
                state = await wait_observed(js, sid, replaced(before[sid]), timeout=60)
                assert state.restarts >= 1 and state.phase == "ready", state
                live = [c for c in await containers_of(docker, sid) if c["State"] == "running"]
                assert [c["Id"] for c in live] == [state.container_id]
                assert len(await containers_of(docker, sid)) == 1  # the stopped one was replaced, not kept
                await followers[sid].close()
    finally:
        for sid in (stopped, killed):
            await cleanup_service(docker, sid)
