"""Two premds on one Docker engine (issue 9): each reaps, stops and adopts only containers that carry premd's
labels AND its own instance label. Premd-labelled containers without an instance label, or with another
instance's (even one naming this premd's NATS URL as home), are nobody's to touch."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import aiodocker
import msgspec
import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from common import bus, subjects
from common.embedded_nats import EmbeddedNats
from common.jetstream import ensure_resources, kv_bucket
from common.messages import Ack, Empty, OperationAccepted, StartService
from common.nats_auth import credentials_path, ensure_credentials, read_credentials, server_config
from common.settings import Settings
from scheduler.component import Scheduler
from scheduler.state import instance_id
from tests.support.scheduler_bed import (
    Events,
    cleanup_service,
    new_service_id,
    observed,
    put_catalog,
    ref_manifest,
    running_scheduler,
)
from tests.testbed.containers import ContainerFactory
from tests.testbed.util import free_port, wait_until

pytestmark = pytest.mark.docker


@asynccontextmanager
async def second_bus(tmp_path: Path, bus_credentials: Path) -> AsyncIterator[tuple[str, NATS, JetStreamContext]]:
    """Another premd's NATS (its own JetStream store, so its own instance id): url, admin connection, js."""
    server = EmbeddedNats(tmp_path / "nats-b", port=0, config=server_config(ensure_credentials(bus_credentials)))
    await server.start()
    try:
        admin = read_credentials(credentials_path(bus_credentials, subjects.ADMIN))
        nc = await bus.connect(server.url, "test-b", admin)
        try:
            js = nc.jetstream()
            await ensure_resources(js)
            yield server.url, nc, js
        finally:
            await nc.close()
    finally:
        await server.stop()


async def start_and_wait(nc: NATS, js: JetStreamContext, service_id: str) -> None:
    events = await Events.of_service(js, service_id)
    try:
        accepted = await bus.request(
            nc, subjects.SCHEDULER_START, StartService(service_id=service_id), OperationAccepted, 10
        )
        final = await events.final(accepted.operation_id, timeout=60)
        assert final.type == "succeeded", final
    finally:
        await events.close()


async def passes_after_now(scheduler: Scheduler, count: int = 2) -> None:
    """``count`` complete reconcile passes that began after this call (the first may have listed earlier)."""
    target = scheduler.reconciler.passes + count
    scheduler.reconciler.kick()

    async def done() -> bool:
        if scheduler.reconciler.passes < target:
            scheduler.reconciler.kick()
            return False
        return True

    await wait_until(done, deadline_s=30, what="reconcile passes")


async def state_of(docker: aiodocker.Docker, container_id: str) -> str:
    try:
        info = await docker.containers.container(container_id).show()
    except aiodocker.DockerError as exc:
        if exc.status == 404:
            return "removed"
        raise
    return str(info["State"]["Status"])


async def test_two_premds_on_one_engine_touch_only_their_own_containers(
    nc: NATS,
    js: JetStreamContext,
    settings: Settings,
    tmp_path: Path,
    bus_credentials: Path,
    docker: aiodocker.Docker,
    ref_image: str,
    make_container: ContainerFactory,
) -> None:
    a_sid, b_sid = new_service_id("of-a"), new_service_id("of-b")
    unmarked, foreign, orphan = new_service_id("unmarked"), new_service_id("foreign"), new_service_id("orphan")
    manifests = [ref_manifest(s, ref_image, defaultExternalPort=free_port()) for s in (a_sid, b_sid, unmarked, foreign)]
    async with AsyncExitStack() as stack:
        b_url, b_nc, b_js = await stack.enter_async_context(second_bus(tmp_path, bus_credentials))
        b_settings = msgspec.structs.replace(settings, nats_url=b_url, data_dir=str(tmp_path / "data-b"))
        for catalog in (js, b_js):  # both premds know every service (the same registry)
            await put_catalog(catalog, *manifests)
        try:
            a_instance = await instance_id(await kv_bucket(js, subjects.KV_DESIRED))  # A's, read by A at its start
            # Strangers to both, running, of services both know and neither wants running: premd's labels
            # without an instance label; another instance's naming A's NATS URL as its home (a reused port).
            premd = {"io.premd.managed": "true"}
            strangers = {
                unmarked: await make_container(ref_image, labels={**premd, "io.premd.service": unmarked}),
                foreign: await make_container(
                    ref_image,
                    labels={
                        **premd,
                        "io.premd.service": foreign,
                        "io.premd.instance": "a-premd-long-gone",
                        "io.premd.home": settings.nats_url or "",
                    },
                ),
            }
            # A's own orphan (its instance label, nothing desired): A reaps it, B must not.
            mine = {**premd, "io.premd.service": orphan, "io.premd.instance": a_instance}
            a_orphan = await make_container(ref_image, labels=mine)
            a = await stack.enter_async_context(running_scheduler(settings))
            b = await stack.enter_async_context(running_scheduler(b_settings))
            assert a.instance == a_instance != b.instance

            await start_and_wait(nc, js, a_sid)
            await start_and_wait(b_nc, b_js, b_sid)

            async def orphan_reaped() -> bool:
                return await state_of(docker, a_orphan.id) == "removed"

            await wait_until(orphan_reaped, deadline_s=30, what="A's own orphan reaped by A")
            await passes_after_now(a)
            await passes_after_now(b)
            for sid, container in strangers.items():
                assert await state_of(docker, container.id) == "running", sid
            a_state, b_state = await observed(js, a_sid), await observed(b_js, b_sid)
            assert a_state is not None and a_state.ready and a_state.container_id
            assert b_state is not None and b_state.ready and b_state.container_id
            assert await state_of(docker, a_state.container_id) == "running"
            assert await state_of(docker, b_state.container_id) == "running"
            # Each sees the other's service as not running here (not its container), and no stranger as its own.
            for js_of, sid in ((js, b_sid), (b_js, a_sid), (js, unmarked), (b_js, foreign)):
                seen = await observed(js_of, sid)
                assert seen is None or not seen.running, (sid, seen)

            # Stop all on A: A's service stops; B's and the strangers keep running.
            ack = await bus.request(nc, subjects.SCHEDULER_STOP_ALL, Empty(), Ack, 30)
            assert ack.message == "Stopped 1 services.", ack
            await passes_after_now(a)
            assert await state_of(docker, b_state.container_id) == "running"
            for sid, container in strangers.items():
                assert await state_of(docker, container.id) == "running", sid
        finally:
            await stack.aclose()  # schedulers first: none may restart what the clean-up removes
            for sid in (a_sid, b_sid, orphan):
                await cleanup_service(docker, sid)
