"""Commands racing each other and reconcile, failing exec commands, and a reconcile start that cannot succeed.

Races are made deterministic by holding one await of the in-process scheduler on an event (never by sleeping).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiodocker
import msgspec
import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

import scheduler.starter
from common import bus, subjects
from common.errors import AppError
from common.jetstream import kv_bucket
from common.messages import DesiredState, OperationAccepted, RestartService, ServiceStopped, StartService, StopService
from common.settings import Settings
from scheduler.component import Scheduler
from scheduler.docker_driver import ContainerInfo
from tests.support.scheduler_bed import (
    Events,
    cleanup_service,
    containers_of,
    exec_output,
    new_service_id,
    put_catalog,
    ref_manifest,
    running_scheduler,
    wait_observed,
)
from tests.testbed.containers import ContainerFactory
from tests.testbed.util import free_port, wait_until

pytestmark = pytest.mark.docker

HOLD_S = 10.0
"""Deadline for reaching a held await."""


@pytest.fixture
async def service_id(docker: aiodocker.Docker) -> AsyncIterator[str]:
    sid = new_service_id("race")
    try:
        yield sid
    finally:
        await cleanup_service(docker, sid)


async def _start(nc: NATS, sid: str) -> OperationAccepted:
    return await bus.request(nc, subjects.SCHEDULER_START, StartService(service_id=sid), OperationAccepted, 10)


async def _stop(nc: NATS, sid: str) -> ServiceStopped:
    return await bus.request(nc, subjects.SCHEDULER_STOP, StopService(service_id=sid), ServiceStopped, 20)


async def _passes(scheduler: Scheduler, count: int) -> None:
    """Wait until the reconciler made ``count`` more passes (kicking it, so this does not take intervals)."""
    target = scheduler.reconciler.passes + count

    async def done() -> bool:
        scheduler.reconciler.kick()
        return scheduler.reconciler.passes >= target

    await wait_until(done, deadline_s=HOLD_S, what=f"{count} reconcile passes")


async def test_restart_that_began_before_a_start_joins_it(
    nc: NATS, js: JetStreamContext, settings: Settings, docker: aiodocker.Docker, ref_image: str, service_id: str
) -> None:
    sid = service_id
    await put_catalog(js, ref_manifest(sid, ref_image, defaultExternalPort=free_port()))
    async with running_scheduler(settings) as scheduler:
        await wait_observed(js, sid, lambda s: s.downloaded)
        entered, release = asyncio.Event(), asyncio.Event()
        real = scheduler.ops.containers_of

        async def held(service_id: str) -> list[ContainerInfo]:
            entered.set()
            await release.wait()
            return await real(service_id)

        scheduler.ops.containers_of = held  # type: ignore[method-assign]  # the restart lists containers: hold it
        restart = RestartService(service_id=sid)
        restarting = asyncio.create_task(bus.request(nc, subjects.SCHEDULER_RESTART, restart, OperationAccepted, 10))
        await asyncio.wait_for(entered.wait(), HOLD_S)
        events = await Events.of_service(js, sid)
        started = await _start(nc, sid)  # arrives while the restart waits for Docker
        release.set()
        restarted = await restarting
        assert not started.joined
        assert restarted.joined and restarted.operation_id == started.operation_id  # one operation, not two
        assert (await events.final(started.operation_id)).type == "succeeded"
        assert len(await containers_of(docker, sid)) == 1
        await events.close()


async def test_stop_while_a_start_records_desired_state_wins(
    nc: NATS, js: JetStreamContext, settings: Settings, docker: aiodocker.Docker, ref_image: str, service_id: str
) -> None:
    sid = service_id
    await put_catalog(js, ref_manifest(sid, ref_image, defaultExternalPort=free_port()))
    async with running_scheduler(settings) as scheduler:
        await wait_observed(js, sid, lambda s: s.downloaded)
        entered, release = asyncio.Event(), asyncio.Event()
        kv = scheduler.ops.d.desired._kv
        real_create = kv.create

        async def held_create(key: str, value: bytes, validate_keys: bool = True, msg_ttl: float | None = None) -> int:
            entered.set()
            await release.wait()
            return await real_create(key, value, validate_keys, msg_ttl)

        kv.create = held_create  # type: ignore[method-assign]  # the start's desired-state write: hold it
        starting = asyncio.create_task(_start(nc, sid))
        await asyncio.wait_for(entered.wait(), HOLD_S)
        kv.create = real_create  # type: ignore[method-assign]
        stopping = asyncio.create_task(_stop(nc, sid))

        async def stop_took_over() -> bool:
            op = scheduler.ops._ops.get(sid)
            return stopping.done() or (op is not None and op.kind == "stop")

        await wait_until(stop_took_over, deadline_s=HOLD_S, what="the stop registered")
        release.set()
        stopped = await stopping  # the start in flight counts as running: nothing "not running" about it
        assert stopped.service_id == sid
        with pytest.raises(AppError) as refused:
            await starting
        assert refused.value.code == "state.conflict"
        assert not scheduler.ops.d.desired.wants_running(sid)
        await _passes(scheduler, 2)
        assert await containers_of(docker, sid) == []
        state = await wait_observed(js, sid, lambda s: s.phase == "stopped")
        assert not state.running


async def test_stop_keeps_the_service_while_it_reports_the_cancelled_start(
    nc: NATS, js: JetStreamContext, settings: Settings, docker: aiodocker.Docker, ref_image: str, service_id: str
) -> None:
    sid = service_id
    env = ["REF_READY_DELAY_S=600"]
    await put_catalog(js, ref_manifest(sid, ref_image, envVariables=env, defaultExternalPort=free_port()))
    async with running_scheduler(settings) as scheduler:
        await wait_observed(js, sid, lambda s: s.downloaded)
        events = await Events.of_service(js, sid)
        accepted = await _start(nc, sid)
        await events.until(lambda e: e.type == "state" and e.phase == "starting")
        entered, release = asyncio.Event(), asyncio.Event()
        publisher = scheduler.ops.d.events
        real_publish = publisher.publish

        async def held_publish(operation_id: str, service_id: str, kind: Any, type_: Any, **fields: Any) -> None:
            if operation_id == accepted.operation_id and type_ == "failed":  # the stop reports the cancelled start
                entered.set()
                await release.wait()
            await real_publish(operation_id, service_id, kind, type_, **fields)

        publisher.publish = held_publish  # type: ignore[method-assign]
        stopping = asyncio.create_task(_stop(nc, sid))
        await asyncio.wait_for(entered.wait(), HOLD_S)
        # The start task is gone, the stop is not done: neither reconcile nor a user may start the service now.
        assert not scheduler.ops.start_for_reconcile(sid)
        with pytest.raises(AppError) as refused:
            await _start(nc, sid)
        assert refused.value.code == "state.conflict"
        release.set()
        await stopping
        await _passes(scheduler, 2)
        assert await containers_of(docker, sid) == []
        final = await events.final(accepted.operation_id)
        assert final.type == "failed" and final.message == "cancelled by a stop"
        await events.close()


async def test_exec_command_that_hangs_or_fails_is_logged_not_fatal(
    nc: NATS,
    js: JetStreamContext,
    settings: Settings,
    docker: aiodocker.Docker,
    ref_image: str,
    service_id: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sid = service_id
    monkeypatch.setattr(scheduler.starter, "EXEC_TIMEOUT_S", 0.5)
    commands = ["sleep 600", "sh -c 'unbalanced", "sh -c 'echo ran >> /data/exec.log'"]
    await put_catalog(js, ref_manifest(sid, ref_image, execCommands=commands, defaultExternalPort=free_port()))
    async with running_scheduler(settings):
        await wait_observed(js, sid, lambda s: s.downloaded)
        events = await Events.of_service(js, sid)
        accepted = await _start(nc, sid)
        final = await events.final(accepted.operation_id)
        assert final.type == "succeeded", final
        (container,) = await containers_of(docker, sid)
        assert (await exec_output(docker, container["Id"], "cat", "/data/exec.log")).split() == ["ran"]
        await events.close()


async def test_reconcile_start_failing_without_a_container_backs_off(
    nc: NATS,
    js: JetStreamContext,
    settings: Settings,
    ref_image: str,
    make_container: ContainerFactory,
    service_id: str,
) -> None:
    sid = service_id
    await put_catalog(js, ref_manifest(sid, ref_image, defaultExternalPort=free_port()))
    # Another premd on this engine holds the container name: every create of ours fails, no container is left.
    foreign = {"io.premd.managed": "true", "io.premd.instance": "another-premd", "io.premd.service": sid}
    await make_container(ref_image, name=sid, labels=foreign, start=False)
    desired = await kv_bucket(js, subjects.KV_DESIRED)
    wanted = DesiredState(service_id=sid, running=True, generation=1, operation_id="before-restart")
    await desired.put(sid, msgspec.json.encode(wanted))
    slow = msgspec.structs.replace(settings, crash_backoff_s=60.0)
    async with running_scheduler(slow) as scheduler:
        await wait_observed(js, sid, lambda s: s.phase == "failed" and s.error_code == "container.name_taken")
        await _passes(scheduler, 3)
        filtered = subjects.service_events_filter(sid)
        info = await js.stream_info(subjects.EVENTS_STREAM, subjects_filter=filtered)
        failures = sum(n for subject, n in (info.state.subjects or {}).items() if subject.endswith(".failed"))
        assert failures == 1  # one attempt, then the backoff: not one per pass
        assert scheduler.reconciler._wake_at is not None  # it will try again, later


async def test_stop_while_reconcile_records_a_crash_leaves_it_stopped(
    nc: NATS, js: JetStreamContext, settings: Settings, docker: aiodocker.Docker, ref_image: str, service_id: str
) -> None:
    sid = service_id
    env = ["REF_CRASH_AFTER_S=1", "REF_CRASH_CODE=7"]
    await put_catalog(js, ref_manifest(sid, ref_image, envVariables=env, defaultExternalPort=free_port()))
    slow = msgspec.structs.replace(settings, crash_backoff_s=60.0)
    async with running_scheduler(slow) as scheduler:
        await wait_observed(js, sid, lambda s: s.downloaded)
        entered, release = asyncio.Event(), asyncio.Event()
        real_tail = scheduler.driver.logs_tail

        async def held_tail(container_id: str, lines: int = 20) -> list[str]:
            entered.set()  # reconcile reads the crashed container's logs: hold it there
            await release.wait()
            return await real_tail(container_id, lines)

        scheduler.driver.logs_tail = held_tail  # type: ignore[method-assign]
        events = await Events.of_service(js, sid)
        accepted = await _start(nc, sid)
        assert (await events.final(accepted.operation_id)).type == "succeeded"  # ready, then it crashes
        await asyncio.wait_for(entered.wait(), 30)
        await _stop(nc, sid)
        release.set()
        await _passes(scheduler, 2)
        state = await wait_observed(js, sid, lambda s: s.phase == "stopped")
        assert state.error_code is None and state.container_id is None and not state.running
        assert await containers_of(docker, sid) == []
        await events.close()
