"""The scheduler against the real engine: start -> ready -> HTTP, stop, restart, ports, fit, failures."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Callable

import aiodocker
import aiohttp
import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from common import bus, subjects
from common.errors import AppError, FitError
from common.messages import OperationAccepted, RestartService, ServiceStopped, StartService, StopService
from common.settings import Settings
from tests.support.scheduler_bed import (
    Events,
    containers_of,
    exec_output,
    observed,
    put_catalog,
    ref_manifest,
    running_scheduler,
    service_id_maker,
    wait_observed,
)
from tests.testbed.util import free_port

pytestmark = pytest.mark.docker

EXEC = "sh -c 'echo ran >> /data/exec.log'"


@pytest.fixture
async def service_ids(docker: aiodocker.Docker) -> AsyncIterator[Callable[[], str]]:
    """New unique service ids; their containers and volumes are removed after the test."""
    async with service_id_maker(docker) as make:
        yield make


async def _start(nc: NATS, sid: str, force: bool = False) -> OperationAccepted:
    return await bus.request(
        nc, subjects.SCHEDULER_START, StartService(service_id=sid, force=force), OperationAccepted, 5
    )


async def test_start_ready_stop_restart(
    nc: NATS,
    js: JetStreamContext,
    settings: Settings,
    docker: aiodocker.Docker,
    ref_image: str,
    service_ids: Callable[[], str],
) -> None:
    sid = service_ids()
    port = free_port()
    manifest = ref_manifest(
        sid, ref_image, defaultExternalPort=port, envVariables=["REF_MODEL=lifecycle"], execCommands=[EXEC]
    )
    await put_catalog(js, manifest)
    async with running_scheduler(settings):
        await wait_observed(js, sid, lambda s: s.downloaded)
        events = await Events.of_service(js, sid)
        accepted = await _start(nc, sid)
        first = await events.until(lambda e: e.type == "state" and e.phase == "starting")
        state = await observed(js, sid)  # in KV before the event announcing it
        assert state is not None and state.running and state.host_port == port
        final = await events.final(accepted.operation_id)
        assert final.type == "succeeded" and final.phase == "ready" and final.host_port == port
        assert first.host_port == port
        state = await wait_observed(js, sid, lambda s: s.ready)
        assert state.phase == "ready" and state.volume_name == f"prem-{sid}-data"

        chat = {"model": sid, "messages": [{"role": "user", "content": "hi"}]}
        async with aiohttp.ClientSession() as http:
            async with http.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=chat) as resp:
                assert resp.status == 200
                assert (await resp.json())["object"] == "chat.completion"

        (container,) = await containers_of(docker, sid)
        info = await docker.containers.container(container["Id"]).show()
        assert info["Name"] == f"/{sid}"
        labels = info["Config"]["Labels"]
        assert labels["io.premd.managed"] == "true" and labels["io.premd.service"] == sid
        assert labels["io.premd.operation"] == accepted.operation_id and int(labels["io.premd.generation"]) >= 1
        assert "REF_MODEL=lifecycle" in info["Config"]["Env"]
        assert info["HostConfig"]["AutoRemove"] is False
        assert info["HostConfig"]["PortBindings"]["8000/tcp"] == [{"HostIp": "127.0.0.1", "HostPort": str(port)}]
        assert info["HostConfig"]["Binds"] == [f"prem-{sid}-data:/data:rw"]
        assert (await exec_output(docker, container["Id"], "cat", "/data/exec.log")).split() == ["ran"]

        # A second start of a running service joins; restart re-runs execCommands.
        again = await _start(nc, sid)
        assert again.joined
        restart = await bus.request(
            nc, subjects.SCHEDULER_RESTART, RestartService(service_id=sid), OperationAccepted, 5
        )
        assert (await events.final(restart.operation_id)).type == "succeeded"
        assert (await exec_output(docker, container["Id"], "cat", "/data/exec.log")).split() == ["ran", "ran"]

        stopped = await bus.request(nc, subjects.SCHEDULER_STOP, StopService(service_id=sid), ServiceStopped, 10)
        assert stopped.service_id == sid
        state = await observed(js, sid)  # synchronous: KV already says stopped
        assert state is not None and state.phase == "stopped" and not state.running and state.host_port is None
        assert await containers_of(docker, sid) == []
        await docker.volumes.get(f"prem-{sid}-data")  # type: ignore[no-untyped-call]  # the volume survives
        with pytest.raises(AppError) as not_running:
            await bus.request(nc, subjects.SCHEDULER_STOP, StopService(service_id=sid), ServiceStopped, 10)
        assert not_running.value.code == "service.not_running"

        # Started again: the data in the volume is still there, execCommands ran once more.
        accepted = await _start(nc, sid)
        assert (await events.final(accepted.operation_id)).type == "succeeded"
        (container,) = await containers_of(docker, sid)
        assert (await exec_output(docker, container["Id"], "cat", "/data/exec.log")).split() == ["ran"] * 3
        await events.close()


async def test_taken_port_moves_to_the_next_free_one(
    nc: NATS, js: JetStreamContext, settings: Settings, ref_image: str, service_ids: Callable[[], str]
) -> None:
    sid = service_ids()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        await put_catalog(js, ref_manifest(sid, ref_image, defaultExternalPort=taken))
        async with running_scheduler(settings):
            await wait_observed(js, sid, lambda s: s.downloaded)
            events = await Events.of_service(js, sid)
            accepted = await _start(nc, sid)
            starting = await events.until(lambda e: e.type == "state")
            assert starting.host_port is not None and starting.host_port > taken
            assert f"port {taken} was taken" in starting.status
            assert (await events.final(accepted.operation_id)).type == "succeeded"
            state = await observed(js, sid)
            assert state is not None and state.host_port == starting.host_port and state.ready
            await events.close()


async def test_fit_check_refuses_with_numbers_and_force_overrides(
    nc: NATS,
    js: JetStreamContext,
    settings: Settings,
    docker: aiodocker.Docker,
    ref_image: str,
    service_ids: Callable[[], str],
) -> None:
    sid = service_ids()
    huge = 64 * 1024 * 1024  # MiB: 64 TiB
    await put_catalog(js, ref_manifest(sid, ref_image, modelInfo={"memoryRequirements": huge}))
    async with running_scheduler(settings):
        await wait_observed(js, sid, lambda s: s.downloaded)
        with pytest.raises(FitError) as refused:
            await _start(nc, sid)
        assert refused.value.code == "fit.memory"
        assert f"needs {huge} MiB memory" in refused.value.message and "MiB available" in refused.value.message
        assert await containers_of(docker, sid) == []

        events = await Events.of_service(js, sid)
        accepted = await _start(nc, sid, force=True)
        assert (await events.final(accepted.operation_id)).type == "succeeded"
        await events.close()


async def test_crash_during_start_reports_exit_code_and_log_tail(
    nc: NATS, js: JetStreamContext, settings: Settings, ref_image: str, service_ids: Callable[[], str]
) -> None:
    sid = service_ids()
    env = ["REF_CRASH_AFTER_S=0", "REF_CRASH_CODE=3"]
    await put_catalog(js, ref_manifest(sid, ref_image, envVariables=env, defaultExternalPort=free_port()))
    async with running_scheduler(settings):
        await wait_observed(js, sid, lambda s: s.downloaded)
        events = await Events.of_service(js, sid)
        accepted = await _start(nc, sid)
        final = await events.final(accepted.operation_id)
        assert final.type == "failed" and final.error_code == "service.start_failed"
        assert final.exit_code == 3
        assert final.log_tail is not None and any("crashing with code 3" in line for line in final.log_tail)
        state = await observed(js, sid)
        assert state is not None and state.phase == "failed" and state.exit_code == 3 and not state.running
        assert state.log_tail == final.log_tail
        await events.close()


async def test_never_ready_fails_at_the_deadline(
    nc: NATS,
    js: JetStreamContext,
    settings: Settings,
    docker: aiodocker.Docker,
    ref_image: str,
    service_ids: Callable[[], str],
) -> None:
    sid = service_ids()
    manifest = ref_manifest(
        sid, ref_image, envVariables=["REF_READY_DELAY_S=600"], readinessTimeoutS=2.0, defaultExternalPort=free_port()
    )
    await put_catalog(js, manifest)
    async with running_scheduler(settings):
        await wait_observed(js, sid, lambda s: s.downloaded)
        events = await Events.of_service(js, sid)
        accepted = await _start(nc, sid)
        final = await events.final(accepted.operation_id, timeout=15)
        assert final.type == "failed" and final.error_code == "service.not_ready"
        assert "not ready within 2 s" in (final.message or "")
        assert final.log_tail is not None
        (container,) = await containers_of(docker, sid)  # kept, stopped, for its logs
        assert container["State"] == "exited"
        await events.close()


async def test_unknown_unsupported_and_not_downloaded(
    nc: NATS, js: JetStreamContext, settings: Settings, service_ids: Callable[[], str]
) -> None:
    missing, unsupported = service_ids(), service_ids()
    await put_catalog(
        js,
        ref_manifest(missing, "premd-test/never-built:404"),
        ref_manifest(unsupported, "x", dockerImages={"gpu": {"image": "premd-test/gpu-only:1"}}),
    )
    async with running_scheduler(settings):
        for sid, code in (("no-such-service", "service.not_found"), (unsupported, "service.unsupported")):
            with pytest.raises(AppError) as err:
                await _start(nc, sid)
            assert err.value.code == code
        with pytest.raises(AppError) as err:
            await _start(nc, missing)
        assert err.value.code == "image.not_downloaded"
