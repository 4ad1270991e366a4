"""Crash safety: kill -9 the scheduler mid-start, tamper with Docker behind its back, restart it: it converges."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from pathlib import Path

import aiodocker
import msgspec
import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from common import bus, subjects
from common.jetstream import kv_bucket
from common.messages import OperationAccepted, ServiceState, StartService
from common.settings import Settings
from scheduler.reconcile_rules import CRASHLOOP_AFTER
from scheduler.state import instance_id
from tests.support.scheduler_bed import (
    Events,
    SchedulerProcess,
    cleanup_service,
    containers_of,
    exec_output,
    new_service_id,
    observed,
    put_catalog,
    ref_manifest,
    running_scheduler,
    start_and_wait,
    wait_observed,
)
from tests.testbed.containers import ContainerFactory
from tests.testbed.util import free_port, wait_until

pytestmark = pytest.mark.docker


@pytest.fixture
async def process(nats_url: str, tmp_path: Path, bus_credentials: Path) -> AsyncIterator[SchedulerProcess]:
    proc = SchedulerProcess(nats_url, tmp_path / "scheduler.log", bus_credentials)
    try:
        yield proc
    finally:
        await proc.kill(signal.SIGTERM)


def _matches(state: ServiceState | None, container: dict[str, object]) -> bool:
    ports = [p for p in container.get("Ports") or [] if isinstance(p, dict) and p.get("PublicPort")]  # type: ignore[attr-defined]
    return (
        state is not None
        and state.running
        and state.ready
        and state.container_id == container["Id"]
        and bool(ports)
        and state.host_port == ports[0]["PublicPort"]
    )


async def test_kill_9_mid_start_then_converge(
    nc: NATS,
    js: JetStreamContext,
    docker: aiodocker.Docker,
    ref_image: str,
    make_container: ContainerFactory,
    process: SchedulerProcess,
) -> None:
    slow, steady, stray = new_service_id("slow"), new_service_id("steady"), new_service_id("stray")
    await put_catalog(
        js,
        ref_manifest(
            slow,
            ref_image,
            envVariables=["REF_READY_DELAY_S=3"],
            execCommands=["sh -c 'echo ran >> /data/exec.log'"],
            defaultExternalPort=free_port(),
        ),
        ref_manifest(steady, ref_image, defaultExternalPort=free_port()),
        ref_manifest(stray, ref_image, defaultExternalPort=free_port()),
    )
    try:
        await process.start(nc)
        events = await Events.of_service(js, steady)
        accepted = await bus.request(
            nc, subjects.SCHEDULER_START, StartService(service_id=steady), OperationAccepted, 5
        )
        final = await events.final(accepted.operation_id)
        assert final.type == "succeeded", final
        await events.close()

        events = await Events.of_service(js, slow)
        await bus.request(nc, subjects.SCHEDULER_START, StartService(service_id=slow), OperationAccepted, 5)
        await events.until(lambda e: e.type == "state" and e.phase == "starting")  # in flight: not ready yet
        await process.kill()  # kill -9 while the start waits for readiness
        await events.close()
        (slow_before,) = await containers_of(docker, slow)

        # Behind its back: delete one service's container, start a labelled one for an undesired service.
        (steady_before,) = await containers_of(docker, steady)
        await docker.containers.container(steady_before["Id"]).delete(force=True)
        instance = await instance_id(await kv_bucket(js, subjects.KV_DESIRED))  # the scheduler's, made at its start
        labels = {"io.premd.managed": "true", "io.premd.instance": instance, "io.premd.service": stray}
        orphan = await make_container(ref_image, labels=labels)

        await process.start(nc)
        slow_state = await wait_observed(js, slow, lambda s: s.ready, timeout=30)
        steady_state = await wait_observed(  # KV said "ready" (the deleted container) until the first pass
            js, steady, lambda s: s.ready and s.container_id != steady_before["Id"], timeout=30
        )

        async def orphan_gone() -> bool:
            return all(c["Id"] != orphan.id for c in await containers_of(docker, stray))

        await wait_until(orphan_gone, deadline_s=30, what="orphan removed")

        (slow_after,) = await containers_of(docker, slow)  # exactly one: adopted, not duplicated
        assert slow_after["Id"] == slow_before["Id"]
        # killed before they ran: the adopting scheduler runs the execCommands, once
        assert (await exec_output(docker, slow_after["Id"], "cat", "/data/exec.log")).split() == ["ran"]
        (steady_after,) = await containers_of(docker, steady)  # recreated once
        assert steady_after["Id"] != steady_before["Id"]
        assert _matches(await observed(js, slow), slow_after), slow_state
        assert _matches(await observed(js, steady), steady_after), steady_state
        stray_state = await observed(js, stray)
        assert stray_state is not None and not stray_state.running
    finally:
        await process.kill(signal.SIGTERM)  # first, or it would restart what the clean-up removes
        for sid in (slow, steady, stray):
            await cleanup_service(docker, sid)


async def test_crashing_service_is_restarted_with_backoff_then_reported_as_crash_loop(
    nc: NATS, js: JetStreamContext, settings: Settings, docker: aiodocker.Docker, ref_image: str
) -> None:
    sid = new_service_id("crashy")
    env = ["REF_CRASH_AFTER_S=1", "REF_CRASH_CODE=7"]
    await put_catalog(js, ref_manifest(sid, ref_image, envVariables=env, defaultExternalPort=free_port()))
    fast = msgspec.structs.replace(settings, crash_backoff_s=0.2, crash_backoff_max_s=1.0)
    try:
        async with running_scheduler(fast):
            assert (await start_and_wait(nc, js, sid)).type == "succeeded"  # ready, then it crashes
            first = await wait_observed(js, sid, lambda s: s.phase == "failed" and s.error_code == "service.crashed")
            assert first.exit_code == 7 and first.log_tail and "crashing with code 7" in first.log_tail[-1]
            looping = await wait_observed(js, sid, lambda s: s.phase == "crashloop", timeout=30)
            assert looping.restarts >= CRASHLOOP_AFTER - 1 and looping.error_code == "service.crashed"
            assert "crash loop" in (looping.last_error or "")
            assert len(await containers_of(docker, sid)) == 1  # never two at once
    finally:
        await cleanup_service(docker, sid)
