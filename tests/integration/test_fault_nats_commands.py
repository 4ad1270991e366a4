"""nats-server SIGKILLed and restarted (JetStream on disk) while start and stop commands are in flight, sent over
the bus and through the gateway (issue 9 fault suite): every caller gets an answer or a clear 503 (never a hang),
no acknowledged command is lost, the KV state is intact, and the services converge on what was asked."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Sequence
from functools import partial
from typing import Any

import aiodocker
import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from common import bus, subjects
from common.embedded_nats import EmbeddedNats
from common.errors import ConflictError, UnavailableError
from common.jetstream import kv_bucket, kv_get
from common.messages import CatalogMeta, DesiredState, OperationAccepted, ServiceStopped, StartService, StopService
from common.settings import Settings
from scheduler.component import Scheduler
from tests.integration.edge_support import Client, gateway
from tests.support.scheduler_bed import (
    cleanup_service,
    containers_of,
    new_service_id,
    put_catalog,
    ref_manifest,
    running_scheduler,
    wait_observed,
)
from tests.testbed.util import free_port, wait_until

pytestmark = pytest.mark.docker

SERVICES = 6
"""Half commanded over the bus, half through the gateway's HTTP routes."""
ANSWER_S = 60.0
"""Every caller's answer comes within this (the gateway's start route waits for the container; bus requests
time out after 10 s)."""
BUS_DOWN_CODES = {"bus.timeout", "bus.disconnected"}


Outcome = tuple[str, str]
"""(service id, "acked" or the 503's code)."""


async def over_bus(nc: NATS, sid: str, start: bool) -> Outcome:
    try:
        if start:
            await bus.request(nc, subjects.SCHEDULER_START, StartService(service_id=sid), OperationAccepted, 10)
        else:
            await bus.request(nc, subjects.SCHEDULER_STOP, StopService(service_id=sid), ServiceStopped, 10)
    except UnavailableError as exc:
        assert exc.code in BUS_DOWN_CODES, exc
        return sid, exc.code
    return sid, "acked"


async def over_http(client: Client, sid: str, start: bool) -> Outcome:
    if start:
        resp = await client.post("/v1/run-service/", json={"id": sid})
    else:
        resp = await client.get(f"/v1/stop-service/{sid}")
    async with resp:
        body: Any = await resp.json()
        if resp.status == 200:
            return sid, "acked"
        assert resp.status == 503, (sid, resp.status, body)  # a clear 503 in the envelope, nothing else
        code = body["detail"]["code"]
        assert code in BUS_DOWN_CODES or "not running after" in body["detail"]["message"], body
        return sid, code


async def commands_with_a_kill(
    nats_server: EmbeddedNats, calls: Sequence[Callable[[], Coroutine[Any, Any, Outcome]]]
) -> dict[str, str]:
    """Send every command at once; SIGKILL nats-server as soon as the first one is answered (the others are
    in flight), start it again on the same port and store; every command's outcome by service."""
    tasks = [asyncio.create_task(call()) for call in calls]
    async with asyncio.timeout(ANSWER_S):
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    await nats_server.kill()
    await nats_server.start()
    async with asyncio.timeout(ANSWER_S):  # every caller answered: none hangs
        outcomes = await asyncio.gather(*tasks)
    return dict(outcomes)


async def desired(js: JetStreamContext, sid: str) -> DesiredState | None:
    state, _ = await kv_get(await kv_bucket(js, subjects.KV_DESIRED), sid, DesiredState)
    return state


async def connected(*clients: NATS) -> None:
    async def all_up() -> bool:
        return all(c.is_connected for c in clients)

    await wait_until(all_up, deadline_s=30, what="every connection back")


async def test_nats_killed_with_commands_in_flight_loses_no_acknowledged_work(
    settings: Settings,
    nc: NATS,
    js: JetStreamContext,
    nats_server: EmbeddedNats,
    docker: aiodocker.Docker,
    ref_image: str,
) -> None:
    ids = [new_service_id("natskill") for _ in range(SERVICES)]
    await put_catalog(js, *(ref_manifest(s, ref_image, defaultExternalPort=free_port()) for s in ids))
    by_bus, by_http = ids[: SERVICES // 2], ids[SERVICES // 2 :]
    try:
        async with running_scheduler(settings) as scheduler, gateway(settings) as client:
            instance = scheduler.instance
            for sid in ids:
                await wait_observed(js, sid, lambda s: s.downloaded)

            # Round 1: starts.
            starts = [partial(over_bus, nc, s, True) for s in by_bus]
            starts += [partial(over_http, client, s, True) for s in by_http]
            outcome = await commands_with_a_kill(nats_server, starts)
            await connected(nc, scheduler.nc)
            assert "acked" in outcome.values(), outcome
            for sid in ids:
                if outcome[sid] == "acked":  # acknowledged: recorded, and carried out after the restart
                    state = await desired(js, sid)
                    assert state is not None and state.running, (sid, state)
                else:  # refused with a 503 that says to retry: the retry is answered
                    assert (await over_bus(nc, sid, True))[1] == "acked", sid
            await converged(js, docker, scheduler, ids, running=True)
            await kv_intact(js, scheduler, instance, ids)

            # Round 2: stops, nats killed again.
            stops = [partial(over_bus, nc, s, False) for s in by_bus]
            stops += [partial(over_http, client, s, False) for s in by_http]
            outcome = await commands_with_a_kill(nats_server, stops)
            await connected(nc, scheduler.nc)
            for sid in ids:
                if outcome[sid] == "acked":
                    state = await desired(js, sid)
                    assert state is not None and not state.running, (sid, state)
                else:  # its reply may have been lost after the stop was done: the retry then says so
                    try:
                        assert (await over_bus(nc, sid, False))[1] == "acked", sid
                    except ConflictError as exc:
                        assert exc.code == "service.not_running", exc
            await converged(js, docker, scheduler, ids, running=False)
            await kv_intact(js, scheduler, instance, ids)
    finally:
        for sid in ids:
            await cleanup_service(docker, sid)


async def converged(
    js: JetStreamContext, docker: aiodocker.Docker, scheduler: Scheduler, ids: list[str], *, running: bool
) -> None:
    """Every service ready (or stopped) in KV, nothing stuck starting or stopping; one container each at most."""
    for sid in ids:
        if running:
            state = await wait_observed(js, sid, lambda s: s.ready and s.phase == "ready", timeout=90)
        else:
            state = await wait_observed(js, sid, lambda s: not s.running and s.phase == "stopped", timeout=60)
        found = await containers_of(docker, sid)
        live = [c for c in found if c["State"] == "running"]
        assert len(found) <= 1 and len(live) == (1 if running else 0), (sid, state, found)
        if running:
            assert live[0]["Id"] == state.container_id, (sid, state)
    assert not scheduler.ops.busy(), scheduler.ops.busy()


async def kv_intact(js: JetStreamContext, scheduler: Scheduler, instance: str, ids: list[str]) -> None:
    """The catalog, desired state and instance id survived the kills unchanged."""
    catalog = await kv_bucket(js, subjects.KV_CATALOG)
    meta, _ = await kv_get(catalog, subjects.CATALOG_META_KEY, CatalogMeta)
    assert meta is not None and set(ids) <= set(meta.order)
    for sid in ids:
        assert (await catalog.get(subjects.catalog_key(sid))).value
        assert await desired(js, sid) is not None
    assert scheduler.instance == instance
