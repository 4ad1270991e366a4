"""The gateway listens before its view is loaded (gateway/loading.py): health answers, every other route waits.

A listing asked in that window must be the catalog's, never the empty list of a view not yet loaded.
"""

from __future__ import annotations

import asyncio

from aiohttp.test_utils import TestClient, TestServer
from nats.js import JetStreamContext

from common import subjects
from common.manifest import Manifest
from common.settings import Settings
from gateway.app import create_app
from gateway.loading import loaded
from tests.support.bus_users import connect_as
from tests.support.components import Client
from tests.support.scheduler_bed import put_catalog

SERVICES = 1000


async def test_a_listing_asked_while_the_view_loads_waits_for_it(settings: Settings, js: JetStreamContext) -> None:
    ids = [f"svc-{n:04d}" for n in range(SERVICES)]
    await put_catalog(js, *(Manifest(id=i, name=i, interfaces=["chat"]) for i in ids))
    nc = await connect_as(settings, subjects.GATEWAY)
    client: Client = TestClient(TestServer(create_app(settings, nc), host="127.0.0.1"))
    try:
        await client.start_server()
        # The server listens; 1,000 catalog entries are still on their way into the view's mirrors.
        assert not loaded(client.app)
        health, listing, one = await asyncio.gather(
            client.get("/v1/"), client.get("/v1/services/"), client.get(f"/v1/services/{ids[-1]}")
        )
        assert health.status == 200 and await health.json() == {"status": True}
        assert listing.status == 200, await listing.text()
        assert [s["id"] for s in await listing.json()] == ids
        assert one.status == 200 and (await one.json())["id"] == ids[-1]
        assert loaded(client.app)
        async with client.get("/readyz") as ready:  # loaded; the components are not running in this test
            assert (await ready.json())["view"] == "loaded"
    finally:
        await client.close()
        await nc.close()


async def test_readiness_says_loading_until_the_view_is_in(settings: Settings, js: JetStreamContext) -> None:
    ids = [f"svc-{n:04d}" for n in range(SERVICES)]
    await put_catalog(js, *(Manifest(id=i, name=i, interfaces=["chat"]) for i in ids))
    nc = await connect_as(settings, subjects.GATEWAY)
    client: Client = TestClient(TestServer(create_app(settings, nc), host="127.0.0.1"))
    try:
        await client.start_server()
        assert not loaded(client.app)
        async with client.get("/readyz") as ready:
            body = await ready.json()
        assert ready.status == 503 and body["ready"] is False and body["view"] == "loading", body
    finally:
        await client.close()
        await nc.close()
