"""Registries failing under premd, through HTTP and the bus (issue 9): POST /v1/registries/ answers what happened
when the fetch outlasts the request deadline (defect 7); a flapping registry (500s, garbage, a 100 MB body, a 30 s
stall) keeps the last good catalog, reports each error, and blocks nothing else."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from common import bus, subjects
from common.messages import Empty, RefreshRegistries, RefreshResult, RegistryList
from common.settings import Settings
from gateway.app import create_app
from registry_sync.component import RegistrySync
from tests.support.bus_users import connect_as
from tests.testbed.registries import REGISTRIES_DIR

MOCK = (REGISTRIES_DIR / "prem-daemon-mock-manifests.json").read_bytes()
Mode = Literal["ok", "500", "garbage", "huge", "stall"]
HUGE_BYTES = 100 * 1024 * 1024
STALL_S = 30.0
Client = TestClient[web.Request, web.Application]


@dataclass
class Flapping:
    """One registry document whose failure mode the test switches; counts what it served."""

    mode: Mode = "ok"
    delay_s: float = 0.0
    base: str = ""
    served: dict[str, int] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"{self.base}/registry.json"

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.served[self.mode] = self.served.get(self.mode, 0) + 1
        if self.delay_s:
            await asyncio.sleep(self.delay_s)  # a slow registry (the fault under test), not a wait in the test
        if self.mode == "500":
            return web.Response(status=500, text="upstream broke")
        if self.mode == "garbage":
            return web.Response(body=b"\x00\xff<html>not json", content_type="application/json")
        if self.mode == "stall":
            await asyncio.sleep(STALL_S)
        if self.mode == "huge":
            resp = web.StreamResponse(headers={"Content-Type": "application/json"})
            await resp.prepare(request)
            chunk = b" " * (1024 * 1024)
            try:
                await resp.write(b"[")
                for _ in range(HUGE_BYTES // len(chunk)):
                    await resp.write(chunk)
                await resp.write(b"]")
            except (ConnectionResetError, RuntimeError):  # premd hung up at its size limit, as it should
                pass
            return resp
        etag = '"' + hashlib.sha256(MOCK).hexdigest()[:16] + '"'
        return web.Response(body=MOCK, content_type="application/json", headers={"ETag": etag})


@pytest.fixture
async def flapping() -> AsyncIterator[Flapping]:
    server = Flapping()
    app = web.Application()
    app.router.add_get("/registry.json", server.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server.base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield server
    finally:
        await runner.cleanup()


@asynccontextmanager
async def premd_api(settings: Settings, nc: NATS) -> AsyncIterator[Client]:
    """registry_sync on its own connection and the gateway, both in-process on the test's nats-server."""
    own = await connect_as(settings, subjects.REGISTRY_SYNC)
    sync = RegistrySync(settings, own)
    await sync.start()
    client: Client = TestClient(TestServer(create_app(settings, nc), host="127.0.0.1"))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()
        await sync.stop()
        await own.close()


async def _json(client: Client, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
    async with client.request(method, path, **kwargs) as resp:
        return resp.status, await resp.json()


async def _listed(client: Client) -> list[str]:
    status, body = await _json(client, "GET", "/v1/registries/")
    assert status == 200, body
    return [r["url"] for r in body]


# ---------------------------------------------------------------- defect 7


async def test_a_registry_slower_than_the_request_deadline_is_added_and_the_answer_says_so(
    settings: Settings, nc: NATS, js: JetStreamContext, flapping: Flapping
) -> None:
    """The fetch takes longer than the request deadline but less than the fetch deadline: 200, and it is listed."""
    quick = msgspec.structs.replace(settings, request_timeout_s=1.0, registry_fetch_timeout_s=5.0)
    flapping.delay_s = 2.0
    async with premd_api(quick, nc) as client:
        status, body = await _json(client, "POST", "/v1/registries/", json={"url": flapping.url})
        assert status == 200, body
        assert body == {"url": flapping.url}
        assert flapping.url in await _listed(client)
        status, services = await _json(client, "GET", "/v1/services/")
        assert status == 200 and len(services) == len(msgspec.json.decode(MOCK))


async def test_a_registry_slower_than_the_fetch_deadline_is_refused_and_not_added(
    settings: Settings, nc: NATS, js: JetStreamContext, flapping: Flapping
) -> None:
    quick = msgspec.structs.replace(settings, request_timeout_s=1.0, registry_fetch_timeout_s=1.5)
    flapping.delay_s = 3.0
    async with premd_api(quick, nc) as client:
        status, body = await _json(client, "POST", "/v1/registries/", json={"url": flapping.url})
        assert status == 400, body  # premd's "Failed to add registry <reason>"
        assert body["detail"]["code"] == "registry.fetch_failed" and "within 1.5 s" in body["detail"]["message"]
        assert flapping.url not in await _listed(client)


# ---------------------------------------------------------------- a flapping registry


async def test_a_flapping_registry_keeps_the_last_good_catalog_and_reports_each_failure(
    settings: Settings, nc: NATS, js: JetStreamContext, flapping: Flapping
) -> None:
    """500, garbage, a 100 MB body, a 30 s stall, then healthy again; the catalog never changes meanwhile."""
    quick = msgspec.structs.replace(settings, registry_fetch_timeout_s=2.0, registry_max_bytes=8 * 1024 * 1024)
    async with premd_api(quick, nc) as client:
        status, body = await _json(client, "POST", "/v1/registries/", json={"url": flapping.url})
        assert status == 200, body
        _, good = await _json(client, "GET", "/v1/services/")
        expected = {"500": "500", "garbage": "JSON", "huge": "bytes", "stall": "within 2 s"}
        for mode, says in expected.items():
            flapping.mode = mode  # type: ignore[assignment]
            refresh = asyncio.create_task(
                bus.request(nc, subjects.REGISTRY_REFRESH, RefreshRegistries(url=flapping.url), RefreshResult, 30)
            )
            # Nothing else is blocked while the registry misbehaves: listings and the registry list answer.
            status, listed = await _json(client, "GET", "/v1/services/")
            assert status == 200 and listed == good
            registries = await bus.request(nc, subjects.REGISTRY_LIST, Empty(), RegistryList, 5)
            assert [r.url for r in registries.registries] == [flapping.url]
            result = await refresh
            (report,) = [r for r in result.registries if r.url == flapping.url]
            assert report.status != "ok" and report.error is not None and says in report.error, (mode, report)
            assert report.count == len(good), "the last good content is kept"
            _, after = await _json(client, "GET", "/v1/services/")
            assert after == good, f"{mode}: the catalog changed"
        flapping.mode = "ok"
        again = RefreshRegistries(url=flapping.url)
        result = await bus.request(nc, subjects.REGISTRY_REFRESH, again, RefreshResult, 30)
        assert [r.status for r in result.registries] == ["ok"] and result.registries[0].error is None
    assert set(flapping.served) == {"ok", "500", "garbage", "huge", "stall"}
