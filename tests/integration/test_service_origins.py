"""Pages premd serves (``/proxy/<id>/``) or starts (a service's own port) cannot drive premd (issue 10)."""

from __future__ import annotations

import msgspec
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from common import subjects
from common.jetstream import kv_bucket
from common.manifest import Manifest
from common.messages import CatalogEntry
from gateway.keys import VIEW
from gateway.routes.proxy import SANDBOX_CSP
from tests.integration.edge_support import Client, new_sid, put_service, seen

APP_ORIGIN = "http://localhost:3000"


async def _refused(client: Client, nc: NATS, calls: list[tuple[str, str, dict[str, str]]], code: str) -> None:
    commands = await nc.subscribe(f"{subjects.PREFIX}.scheduler.>")
    await nc.flush()
    try:
        for method, path, headers in calls:
            async with client.request(method, path, headers=headers, json={"id": "x"}) as resp:
                assert resp.status == 403, (method, path, headers)
                assert (await resp.json())["detail"]["code"] == code, (method, path, headers)
        await nc.flush()
        assert commands.pending_msgs == 0  # nothing reached the scheduler
    finally:
        await commands.unsubscribe()


async def test_proxied_pages_run_in_a_sandbox(edge: tuple[Client, str]) -> None:
    client, sid = edge
    async with client.get(f"/proxy/{sid}/v1/") as resp:  # the gateway's own forwarding
        assert resp.status == 200 and resp.headers.getall("Content-Security-Policy") == [SANDBOX_CSP]
    async with client.post(f"/proxy/{sid}/echo", data=b"x", expect100=True) as resp:  # handed to aiohttp
        assert resp.status == 200 and resp.headers.getall("Content-Security-Policy") == [SANDBOX_CSP]


async def test_a_manifest_may_opt_out_of_the_sandbox(
    edge: tuple[Client, str], js: JetStreamContext, ref_port: int
) -> None:
    client, _ = edge
    sid = new_sid()
    await put_service(js, sid, host_port=ref_port)
    manifest = Manifest(id=sid, name=sid, interfaces=["chat"], proxy_sandbox=False)
    catalog = await kv_bucket(js, subjects.KV_CATALOG)
    await catalog.put(subjects.catalog_key(sid), msgspec.json.encode(CatalogEntry(manifest=manifest, origin="test")))
    await seen(client, sid, "ready")
    await client.app[VIEW].catalog.entries_mirror.wait_for(lambda v: subjects.catalog_key(sid) in v, 10)
    async with client.get(f"/proxy/{sid}/v1/") as resp:
        assert resp.status == 200 and "Content-Security-Policy" not in resp.headers


async def test_a_sandboxed_page_cannot_stop_or_run_a_service(edge: tuple[Client, str], nc: NATS) -> None:
    client, sid = edge
    null = {"Origin": "null", "Sec-Fetch-Site": "cross-site"}  # what a fetch from the sandboxed page sends
    calls = [("GET", f"/v1/stop-service/{sid}", null), ("POST", "/v1/run-service/", null)]
    await _refused(client, nc, calls, "security.foreign_origin")


async def test_a_service_port_or_premds_own_origin_cannot_drive_premd(
    edge: tuple[Client, str], nc: NATS, ref_port: int
) -> None:
    client, sid = edge
    own = f"http://127.0.0.1:{client.port}"
    calls = [
        (method, path, {"Origin": origin})
        for origin in (f"http://127.0.0.1:{ref_port}", f"http://localhost:{ref_port}", own)
        for method, path in (("GET", f"/v1/stop-service/{sid}"), ("POST", "/v1/run-service/"))
    ]
    calls += [
        ("GET", f"/v1/stop-service/{sid}", {"Sec-Fetch-Site": site})  # an <img>: no Origin, but the browser says
        for site in ("same-origin", "same-site")
    ]
    calls.append(("POST", f"/proxy/{sid}/echo", {"Origin": f"http://127.0.0.1:{ref_port}"}))
    await _refused(client, nc, calls, "security.service_origin")


async def test_prem_apps_origin_still_drives_premd(edge: tuple[Client, str]) -> None:
    client, sid = edge
    async with client.post(f"/proxy/{sid}/echo", data=b"x", headers={"Origin": APP_ORIGIN}) as resp:
        assert resp.status == 200
        assert resp.headers["Access-Control-Allow-Origin"] == APP_ORIGIN
    async with client.post("/v1/run-service/", json={"id": sid}, headers={"Origin": APP_ORIGIN}) as resp:
        text = await resp.text()
        assert resp.status != 403 and "security." not in text, text  # past the guard (what follows is the bus's)
