"""The bus is authorized: the nats-server itself refuses anonymous clients and every publish or subscription
outside a user's permissions (raw nats-py connections here, so no premd code stands between test and server)."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import nats.errors
import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy

from common import subjects
from common.component import Running
from common.jetstream import kv_bucket
from common.nats_auth import BusCredentials, credentials_path, read_credentials
from common.settings import Settings
from registry_sync.component import RegistrySync
from tests.support.bus_users import RawClient

DEADLINE_S = 5.0


@pytest.fixture
def users(bus_credentials: Path) -> dict[str, BusCredentials]:
    return {user: read_credentials(credentials_path(bus_credentials, user)) for user in subjects.USERS}


@pytest.fixture
async def raw(nats_url: str, users: dict[str, BusCredentials]) -> AsyncIterator[dict[str, RawClient]]:
    clients: dict[str, RawClient] = {}

    async def close() -> None:
        for client in clients.values():
            await client.nc.close()

    try:
        for user in (subjects.GATEWAY, subjects.READER, subjects.SCHEDULER):
            clients[user] = await RawClient().connect(nats_url, users[user])
        yield clients
    finally:
        await close()


async def test_anonymous_and_wrong_password_connections_are_refused(
    nats_url: str, users: dict[str, BusCredentials]
) -> None:
    for user, password in ((None, None), (subjects.GATEWAY, users[subjects.READER].password)):
        client = NATS()
        try:
            with pytest.raises(nats.errors.Error, match=r"(?i)authorization"):
                await client.connect(nats_url, allow_reconnect=False, connect_timeout=5, user=user, password=password)
        finally:
            await client.close()


async def test_the_gateway_cannot_write_observed_state_or_the_catalog(
    raw: dict[str, RawClient], js: JetStreamContext
) -> None:
    gateway = raw[subjects.GATEWAY]
    await gateway.nc.publish(subjects.kv_subject(subjects.KV_OBSERVED, "forged"), b'{"phase": "ready"}')
    assert await gateway.refused(f'publish to "$KV.{subjects.KV_OBSERVED}.forged"')
    await gateway.nc.publish(subjects.kv_subject(subjects.KV_CATALOG, "svc.forged"), b"{}")
    assert await gateway.refused(f'publish to "$KV.{subjects.KV_CATALOG}.svc.forged"')
    await gateway.nc.publish(f"$JS.API.STREAM.PURGE.KV_{subjects.KV_OBSERVED}", b"")
    assert await gateway.refused("STREAM.PURGE")
    await gateway.nc.publish(f"$JS.API.STREAM.DELETE.KV_{subjects.KV_CATALOG}", b"")
    assert await gateway.refused("STREAM.DELETE")
    # Nothing was written (read back as admin).
    observed = await kv_bucket(js, subjects.KV_OBSERVED)
    assert "forged" not in (await observed.keys() if (await observed.status()).values else [])


async def test_the_gateway_cannot_use_scheduler_internal_subjects(raw: dict[str, RawClient]) -> None:
    gateway = raw[subjects.GATEWAY]
    await gateway.nc.publish(f"{subjects.PREFIX}.scheduler.internal", b"")
    assert await gateway.refused(f'publish to "{subjects.PREFIX}.scheduler.internal"')
    await gateway.nc.publish(subjects.SERVICE_EVENTS_ALL.replace(">", "forged.op.succeeded"), b"{}")
    assert await gateway.refused("premd.evt.svc.forged")
    # Nor listen in on the scheduler: its command queue or its replies.
    await gateway.nc.subscribe(subjects.SCHEDULER_START)
    assert await gateway.refused(f'subscription to "{subjects.SCHEDULER_START}"')
    await gateway.nc.subscribe("_INBOX_scheduler.>")
    assert await gateway.refused('subscription to "_INBOX_scheduler.>"')
    await gateway.nc.subscribe("_INBOX.>")
    assert await gateway.refused('subscription to "_INBOX.>"')


async def test_the_gateway_may_send_commands(raw: dict[str, RawClient], nc: NATS) -> None:
    """The control: what the gateway's role needs goes through (so the refusals above are the server's rules)."""
    seen = await nc.subscribe(subjects.SCHEDULER_START)
    await nc.flush()
    gateway = raw[subjects.GATEWAY]
    await gateway.nc.publish(subjects.SCHEDULER_START, b'{"service_id": "x"}')
    assert (await seen.next_msg(timeout=DEADLINE_S)).data == b'{"service_id": "x"}'
    assert not await gateway.refused("premd.scheduler.start")


async def test_the_scheduler_cannot_write_the_catalog(raw: dict[str, RawClient]) -> None:
    scheduler = raw[subjects.SCHEDULER]
    await scheduler.nc.publish(subjects.kv_subject(subjects.KV_CATALOG, "svc.x"), b"{}")
    assert await scheduler.refused(f'publish to "$KV.{subjects.KV_CATALOG}.svc.x"')
    await scheduler.nc.publish(subjects.kv_subject(subjects.KV_REGISTRY_CONFIG, "registries"), b"{}")
    assert await scheduler.refused(f"$KV.{subjects.KV_REGISTRY_CONFIG}")


async def test_a_reader_reads_the_catalog_and_follows_events_but_cannot_start_a_service(
    settings: Settings, raw: dict[str, RawClient], nc: NATS, js: JetStreamContext
) -> None:
    running = Running(settings)
    await running.start(settings.nats_url or "", [RegistrySync])  # registry_sync writes the catalog meta
    try:
        reader = raw[subjects.READER]
        rjs = reader.nc.jetstream()
        catalog = await rjs.key_value(subjects.KV_CATALOG)
        meta = await catalog.get(subjects.CATALOG_META_KEY)
        assert meta.value is not None and "registries" in json.loads(meta.value)
        watch = await catalog.watchall()
        assert (await watch.updates(timeout=DEADLINE_S)) is not None  # type: ignore[no-untyped-call]
        await watch.stop()  # type: ignore[no-untyped-call]

        live = await reader.nc.subscribe(subjects.EVENTS_ALL)
        replay = await rjs.subscribe(subjects.EVENTS_ALL, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL)
        await reader.nc.flush()
        scheduler = raw[subjects.SCHEDULER]
        event = subjects.service_event("svc-a", "op-1", "succeeded")
        await scheduler.nc.jetstream().publish(event, b'{"type": "succeeded"}')
        assert (await live.next_msg(timeout=DEADLINE_S)).subject == event
        replayed = [(await replay.next_msg(timeout=DEADLINE_S)).subject for _ in range(2)]
        assert replayed == [subjects.CATALOG_CHANGED, event]  # from the stream's start: registry_sync's first

        starts = await nc.subscribe(subjects.SCHEDULER_START)
        await nc.flush()
        await reader.nc.publish(subjects.SCHEDULER_START, json.dumps({"service_id": "x"}).encode())
        assert await reader.refused(f'publish to "{subjects.SCHEDULER_START}"')
        with pytest.raises(nats.errors.TimeoutError):
            await starts.next_msg(timeout=0.5)  # the server dropped it: no scheduler could have seen it
        await reader.nc.publish(subjects.kv_subject(subjects.KV_DESIRED, "x"), b"{}")
        assert await reader.refused(f"$KV.{subjects.KV_DESIRED}.x")
    finally:
        await running.stop()


async def test_passwords_never_reach_the_log(
    settings: Settings, users: dict[str, BusCredentials], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    running = Running(settings)
    await running.start(settings.nats_url or "", [RegistrySync])
    await running.stop()
    logging.getLogger("test").info("credentials %r", users[subjects.REGISTRY_SYNC])
    assert caplog.text and not any(c.password in caplog.text for c in users.values())
