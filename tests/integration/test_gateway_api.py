"""premd's HTTP API end to end: the gateway, registry_sync and the scheduler in-process on a real nats-server.

Registries are the real files of tests/data/registries served over loopback HTTP; services run the test bed's
reference image, pulled from the test bed's OCI registry.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiodocker
import aiohttp
import msgspec
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from common import subjects
from common.embedded_nats import EmbeddedNats
from common.messages import EventType, HostFacts, OperationEvent, ServiceState
from common.settings import Settings
from gateway import streams
from gateway.app import create_app
from gateway.keys import LISTING, VIEW
from gateway.routes import events as events_routes
from gateway.service_json import proxy_base_url, service_json
from registry_sync.component import RegistrySync
from scheduler.component import Scheduler
from tests.support.components import Client as Client  # re-exported: test_fault_events imports it from here
from tests.support.components import gateway, running
from tests.support.images import in_registry, with_own_layer
from tests.support.scheduler_bed import SchedulerProcess, put_catalog, ref_manifest, wait_observed
from tests.testbed.oci_registry import OciRegistry
from tests.testbed.registries import REGISTRIES_DIR
from tests.testbed.sse import SseEvent, iter_sse
from tests.testbed.util import wait_until

DATA = REGISTRIES_DIR
MOCK, MAIN = "prem-daemon-mock-manifests.json", "prem-registry-main-manifests.json"
DEADLINE_S = 30.0
SERVICE_KEYS = 29
LAYER_BYTES = 48 * 1024 * 1024

# ---------------------------------------------------------------- fixtures


@pytest.fixture
async def registry_url() -> AsyncIterator[str]:
    """The real registry files over loopback HTTP: ``<base>/<file name>``."""
    app = web.Application()

    async def document(request: web.Request) -> web.StreamResponse:
        path = DATA / request.match_info["name"]
        if not path.is_file():
            return web.Response(status=404)
        return web.Response(body=path.read_bytes(), content_type="application/json")

    app.router.add_get("/{name}", document)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


@pytest.fixture
async def api(settings: Settings, nc: NATS, js: JetStreamContext) -> AsyncIterator[Client]:
    """The gateway and registry_sync (no scheduler: the routes needing Docker are tested below)."""
    async with running(RegistrySync, settings), gateway(settings) as client:
        yield client


@pytest.fixture
async def full_api(settings: Settings, nc: NATS, js: JetStreamContext) -> AsyncIterator[Client]:
    """The gateway, registry_sync and the scheduler (real Docker)."""
    async with running(RegistrySync, settings), running(Scheduler, settings), gateway(settings) as client:
        yield client


def new_id(prefix: str = "gw") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def get_json(client: Client, path: str, status: int = 200) -> Any:
    async with client.get(path) as resp:
        body = await resp.json()
        assert resp.status == status, body
        return body


async def detail(client: Client, method: str, path: str, status: int = 400, **kwargs: Any) -> str:
    """The message of premd's error envelope."""
    async with client.request(method, path, **kwargs) as resp:
        body = await resp.json()
        assert resp.status == status, body
        message: str = body["detail"]["message"]
        return message


async def wait_listed(client: Client, service_id: str) -> None:
    async def listed() -> bool:
        return service_id in {s["id"] for s in await get_json(client, "/v1/services/")}

    await wait_until(listed, deadline_s=DEADLINE_S, interval=0.05, what=f"{service_id} listed")


def custom_manifest(service_id: str, image: str, **fields: Any) -> dict[str, Any]:
    raw = msgspec.to_builtins(ref_manifest(service_id, image))
    assert isinstance(raw, dict)
    raw["defaultExternalPort"] = 18000 + uuid.uuid4().int % 1000
    raw.update(fields)
    return raw


# ---------------------------------------------------------------- routes without Docker


async def test_health_slash_redirects_and_interfaces(api: Client) -> None:
    assert await get_json(api, "/v1/") == {"status": True}
    cases = {
        "/v1": "/v1/",
        "/v1/services": "/v1/services/",
        "/v1/services/abc/": "/v1/services/abc",
        "/v1/registries?url=http://x/y": "/v1/registries/?url=http://x/y",
        "/v1/stats-all": "/v1/stats-all/",
    }
    for path, target in cases.items():
        async with api.get(path, allow_redirects=False) as resp:
            assert resp.status == 307, path
            assert resp.headers["Location"] == f"http://{resp.url.host}:{resp.url.port}{target}"
    async with api.post("/v1/run-service", allow_redirects=False, json={"id": "x"}) as resp:
        assert resp.status == 307 and resp.headers["Location"].endswith("/v1/run-service/")
    async with api.get("/v1", allow_redirects=True) as resp:
        assert resp.status == 200 and await resp.json() == {"status": True}
    async with api.get("/v1/nothing-here") as resp:
        assert resp.status == 404 and await resp.json() == {"detail": "Not Found"}

    interfaces = await get_json(api, "/v1/interfaces/")
    assert [i["id"] for i in interfaces] == [
        "chat", "embeddings", "vector-store", "coder", "diffuser", "upscaler", "text-to-audio", "audio-to-text",
    ]  # fmt: skip
    assert all(list(i) == ["id", "name", "playground", "documentation", "icon"] for i in interfaces)


async def test_logs_of_an_id_no_service_can_have_is_a_404(api: Client) -> None:
    """Found by fuzzing: an id the bus message cannot carry came back as an undocumented bus-level 400."""
    for path in ("/v1/logs/q%C3%B0%27%2C?follow=%1BT", "/v1/logs/no-such-service"):
        resp = await api.get(path)
        assert resp.status == 404, path
        assert (await resp.json())["detail"]["code"] == "service.not_found"


async def test_validation_errors_have_fastapis_shape(api: Client) -> None:
    missing_id = {"detail": [{"loc": ["body", "id"], "msg": "field required", "type": "value_error.missing"}]}
    async with api.post("/v1/run-service/", json={}) as resp:
        assert resp.status == 422 and await resp.json() == missing_id
    async with api.post("/v1/registries/", json={"uri": "x"}) as resp:
        assert resp.status == 422
        assert (await resp.json())["detail"][0]["loc"] == ["body", "url"]
    async with api.delete("/v1/registries/") as resp:
        assert resp.status == 422
        assert await resp.json() == {
            "detail": [{"loc": ["query", "url"], "msg": "field required", "type": "value_error.missing"}]
        }
    async with api.post("/v1/services/", json={"id": "x", "name": "X"}) as resp:
        assert resp.status == 422
        assert (await resp.json())["detail"][0] == {
            "loc": ["body", "modelInfo"],
            "msg": "field required",
            "type": "value_error.missing",
        }
    bad_port = custom_manifest("x", "img:1", defaultPort="eighty")
    async with api.post("/v1/services/", json=bad_port) as resp:
        assert resp.status == 422
        assert (await resp.json())["detail"][0] == {
            "loc": ["body", "defaultPort"],
            "msg": "value is not a valid integer",
            "type": "type_error.integer",
        }
    async with api.post("/v1/run-service/", data=b"{not json", headers={"Content-Type": "application/json"}) as resp:
        assert resp.status == 422
        assert (await resp.json())["detail"][0]["type"] == "value_error.jsondecode"
    async with api.post("/v1/run-service/") as resp:
        assert resp.status == 422
        assert await resp.json() == {
            "detail": [{"loc": ["body"], "msg": "field required", "type": "value_error.missing"}]
        }


async def test_registries_add_list_remove(api: Client, registry_url: str) -> None:
    mock, main = f"{registry_url}/{MOCK}", f"{registry_url}/{MAIN}"
    assert await get_json(api, "/v1/registries/") == []
    async with api.post("/v1/registries/", json={"url": mock}) as resp:
        assert resp.status == 200 and await resp.json() == {"url": mock}
    async with api.post("/v1/registries/", json={"url": main}) as resp:
        assert resp.status == 200
    assert await get_json(api, "/v1/registries/") == [{"url": mock}, {"url": main}]

    mock_ids = [m["id"] for m in json.loads((DATA / MOCK).read_bytes())]
    main_ids = [m["id"] for m in json.loads((DATA / MAIN).read_bytes())]
    expected = mock_ids + [i for i in main_ids if i not in mock_ids]
    services = await get_json(api, "/v1/services/")  # no waiting: the reply came after the view caught up
    assert [s["id"] for s in services] == expected
    assert all(len(s) == SERVICE_KEYS and isinstance(s["modelInfo"], dict) for s in services)
    host = f"{api.server.host}:{api.server.port}"
    assert services[0]["baseUrl"] == f"http://{host}/proxy/{services[0]['id']}"

    message = await detail(api, "POST", "/v1/registries/", json={"url": mock})
    assert message.startswith("Failed to add registry ")
    message = await detail(api, "POST", "/v1/registries/", json={"url": f"{registry_url}/missing.json"})
    assert message.startswith("Failed to add registry ")

    async with api.delete("/v1/registries/", params={"url": main}) as resp:
        assert resp.status == 200
        assert await resp.json() == {"message": f"Registry {main} removed successfully."}
    assert await get_json(api, "/v1/registries/") == [{"url": mock}]
    assert [s["id"] for s in await get_json(api, "/v1/services/")] == mock_ids
    message = await detail(api, "DELETE", "/v1/registries/", params={"url": main})
    assert message.startswith(f"Failed to remove registry {main}")


async def test_custom_service_and_lookups(api: Client) -> None:
    service_id = new_id()
    manifest = custom_manifest(service_id, "127.0.0.1:5999/premd-test/none:1", description="mine", beta=True)
    async with api.post("/v1/services/", json=manifest) as resp:
        service = await resp.json()
        assert resp.status == 200, service
    assert len(service) == SERVICE_KEYS
    assert service["id"] == service_id and service["description"] == "mine" and service["beta"] is True
    assert service["dockerImage"] == manifest["dockerImages"]["cpu"]["image"]
    assert service["running"] is False and service["runningPort"] is None and service["downloaded"] is False

    assert (await get_json(api, f"/v1/services/{service_id}"))["id"] == service_id
    assert [s["id"] for s in await get_json(api, "/v1/services-by-interface/chat")] == [service_id]
    assert await get_json(api, "/v1/services-by-interface/diffuser") == []
    assert await get_json(api, "/v1/services-by-interface/no-such-interface") == []
    await wait_listed(api, service_id)

    message = await detail(api, "POST", "/v1/services/", json=manifest)
    assert message.startswith("Failed to add service ")
    message = await detail(api, "POST", "/v1/services/", json={**manifest, "id": "not a valid id!"})
    assert message.startswith("Failed to add service ")


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/v1/services/{id}", None),
        ("POST", "/v1/run-service/", {"id": "{id}"}),
        ("GET", "/v1/stop-service/{id}", None),
        ("GET", "/v1/restart-service/{id}", None),
        ("GET", "/v1/remove-service/{id}", None),
        ("GET", "/v1/download-service/{id}", None),
        ("GET", "/v1/download-service-stream/{id}", None),
        ("GET", "/v1/download-service-stream-sse/{id}", None),
        ("GET", "/v1/stats/{id}", None),
    ],
)
async def test_unknown_service_is_premds_400(api: Client, method: str, path: str, body: dict[str, str] | None) -> None:
    service_id = new_id("unknown")
    payload = {k: v.format(id=service_id) for k, v in body.items()} if body else None
    async with api.request(method, path.format(id=service_id), json=payload) as resp:
        assert resp.status == 400
        assert await resp.json() == {"detail": {"message": "Service not found.", "code": "service.not_found"}}


async def test_scheduler_away_is_503_with_premds_envelope(api: Client) -> None:
    message = await detail(api, "GET", "/v1/stats-all/", status=503)
    assert message.startswith("Failed to get stats ")
    message = await detail(api, "GET", "/v1/system-prune/", status=503)
    assert message.startswith("Failed to prune docker ")


async def test_listing_is_kept_and_rebuilt_only_where_state_changed(api: Client, js: JetStreamContext) -> None:
    """The encoded list is reused until something changes; a state change re-encodes that one service only."""
    manifests = [ref_manifest(f"bulk-{i:04d}-{uuid.uuid4().hex[:6]}", f"x/img-{i}:1") for i in range(1000)]
    await put_catalog(js, *manifests)

    async def all_listed() -> bool:
        return len(await get_json(api, "/v1/services/")) == 1000

    await wait_until(all_listed, deadline_s=DEADLINE_S, interval=0.05, what="1000 services listed")
    listing = api.app[LISTING]
    services, body = listing.services("http", "h")
    assert listing.services("http", "h")[1] is body  # nothing changed: the same bytes, not re-encoded

    changed = manifests[500].id
    kv = await js.key_value(subjects.KV_OBSERVED)
    state = ServiceState(service_id=changed, phase="ready", running=True, ready=True, host_port=41234, downloaded=True)
    await kv.put(changed, msgspec.json.encode(state))

    async def shows_running() -> bool:
        return bool((await get_json(api, f"/v1/services/{changed}"))["running"])

    await wait_until(shows_running, deadline_s=DEADLINE_S, interval=0.05, what="the state change listed")
    after, new_body = listing.services("http", "h")
    view = api.app[VIEW]
    fresh = [
        service_json(entry, view.state(entry.manifest.id), view.host, proxy_base_url("http", "h", entry.manifest.id))
        for entry in view.catalog.entries()
    ]
    assert new_body == msgspec.json.encode(fresh)  # the pieces joined are exactly a full re-encoding
    assert [i for i, (a, b) in enumerate(zip(services, after, strict=True)) if a is not b] == [500]
    async with api.get("/v1/services/") as resp:
        raw = await resp.read()
        listed = json.loads(raw)
        # The head goes out before the body (two writes, gateway/routes/services.py): the same answer as ever.
        assert resp.headers["Content-Type"] == "application/json"
        assert int(resp.headers["Content-Length"]) == len(raw)
        assert raw == listing.services("http", resp.url.raw_authority)[1]
    assert listed[500]["runningPort"] == 41234 and listed[499]["running"] is False


async def test_listing_revalidates_with_its_etag(api: Client, js: JetStreamContext) -> None:
    """GET /v1/services/ carries an ETag; If-None-Match answers 304 (no body) until the list's bytes change."""
    manifests = [ref_manifest(f"etag-{i}-{uuid.uuid4().hex[:6]}", f"x/etag-{i}:1") for i in range(3)]
    await put_catalog(js, *manifests)
    ids = {m.id for m in manifests}

    async def listed() -> bool:
        return ids <= {s["id"] for s in await get_json(api, "/v1/services/")}

    await wait_until(listed, deadline_s=DEADLINE_S, interval=0.05, what="the services listed")
    async with api.get("/v1/services/") as resp:
        body = await resp.read()
        tag = resp.headers["ETag"]
        assert resp.status == 200 and resp.headers["Cache-Control"] == "no-cache" and tag.startswith('"')
    for header in (tag, f"W/{tag}", f'"other", {tag}', "*"):
        async with api.get("/v1/services/", headers={"If-None-Match": header}) as resp:
            assert resp.status == 304, header
            assert await resp.read() == b"" and resp.headers["ETag"] == tag
    async with api.get("/v1/services/", headers={"If-None-Match": '"not-the-tag"'}) as resp:
        assert resp.status == 200 and await resp.read() == body and resp.headers["ETag"] == tag

    # New host facts whose free amounts cross no requirement: the same bytes, so still 304.
    host = await js.key_value(subjects.KV_HOST)
    view = api.app[VIEW]
    for tick in range(2):
        facts = HostFacts(
            gpus=[],
            memory_total_bytes=1 << 40,
            memory_available_bytes=(1 << 39) - tick * 4096,
            disk_free_bytes=1 << 40,
            disk_total_bytes=1 << 41,
            docker_available=True,
            updated_at=time.time(),
        )
        await host.put(subjects.HOST_FACTS_KEY, msgspec.json.encode(facts))

        async def facts_seen(expected: HostFacts = facts) -> bool:
            return view.host == expected

        await wait_until(facts_seen, deadline_s=DEADLINE_S, interval=0.02, what="the host facts seen")
        async with api.get("/v1/services/", headers={"If-None-Match": tag}) as resp:
            if tick == 0 and resp.status == 200:  # the first facts may change flags (unknown facts claim all)
                body, tag = await resp.read(), resp.headers["ETag"]
            else:
                assert resp.status == 304 and resp.headers["ETag"] == tag

    # A change the client sees (a service running): a new tag and the new list.
    changed = manifests[1].id
    state = ServiceState(service_id=changed, phase="ready", running=True, ready=True, host_port=41235, downloaded=True)
    await (await js.key_value(subjects.KV_OBSERVED)).put(changed, msgspec.json.encode(state))

    async def state_seen() -> bool:
        return view.state(changed) == state

    await wait_until(state_seen, deadline_s=DEADLINE_S, interval=0.02, what="the state seen")
    async with api.get("/v1/services/", headers={"If-None-Match": tag}) as resp:
        assert resp.status == 200 and resp.headers["ETag"] != tag
        assert {s["id"]: s["runningPort"] for s in json.loads(await resp.read())}[changed] == 41235


# ---------------------------------------------------------------- events


async def publish_event(js: JetStreamContext, service_id: str, operation_id: str, type_: EventType) -> int:
    event = OperationEvent(operation_id=operation_id, service_id=service_id, kind="pull", type=type_, at=time.time())
    ack = await js.publish(subjects.service_event(service_id, operation_id, type_), msgspec.json.encode(event))
    return ack.seq


async def read_events(client: Client, path: str, count: int, headers: dict[str, str] | None = None) -> list[SseEvent]:
    events: list[SseEvent] = []
    async with client.get(path, headers=headers or {}) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "text/event-stream; charset=utf-8"
        async with asyncio.timeout(DEADLINE_S):
            async for event in iter_sse(resp):
                events.append(event)
                if len(events) == count:
                    break
    return events


async def test_events_resume_after_last_event_id_and_filter(api: Client, js: JetStreamContext) -> None:
    sid, other = new_id(), new_id()
    seqs = [
        await publish_event(js, sid, "op1", "accepted"),
        await publish_event(js, other, "op2", "accepted"),
        await publish_event(js, sid, "op1", "progress"),
        await publish_event(js, sid, "op3", "succeeded"),
    ]
    first_two = await read_events(api, f"/v1/events?service={sid}&since=all", 2)
    assert [e.event for e in first_two] == ["accepted", "progress"]
    assert [json.loads(e.data)["operation_id"] for e in first_two] == ["op1", "op1"]

    # Resume after the first: no gap, no repeat (ids are stream sequences).
    async with api.get(f"/v1/events?service={sid}", headers={"Last-Event-ID": str(seqs[0])}) as resp:
        raw = await resp.content.readuntil(b"\n\n")
        assert raw.startswith(f"id: {seqs[2]}\nevent: progress\ndata: ".encode())
        raw = await resp.content.readuntil(b"\n\n")
        assert raw.startswith(f"id: {seqs[3]}\nevent: succeeded\n".encode())

    by_operation = await read_events(api, f"/v1/events?operation=op2&since={seqs[0]}", 1)
    assert json.loads(by_operation[0].data)["service_id"] == other

    # Default: new events only.
    async def later() -> None:
        await publish_event(js, sid, "op4", "failed")

    async with api.get(f"/v1/events?service={sid}") as resp, asyncio.timeout(DEADLINE_S):
        task = asyncio.create_task(later())
        event = await anext(iter_sse(resp))
        await task
    assert event.event == "failed" and json.loads(event.data)["operation_id"] == "op4"

    async with api.get("/v1/events?since=yesterday") as resp:
        assert resp.status == 422
    async with api.get("/v1/events?service=a.b") as resp:
        assert resp.status == 422


async def test_event_stream_pings(api: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(streams, "PING_INTERVAL_S", 0.05)
    async with api.get("/v1/events") as resp, asyncio.timeout(DEADLINE_S):
        assert await resp.content.readuntil(b"\n\n") == b": ping\n\n"
        assert await resp.content.readuntil(b"\n\n") == b": ping\n\n"


def test_premds_ping_comment() -> None:
    ping = streams.premd_sse_ping()
    assert ping.startswith(b": ping - ") and ping.endswith(b"\r\n\r\n")
    stamp = ping[len(b": ping - ") : -4].decode()
    assert datetime.datetime.fromisoformat(stamp).tzinfo is None  # str(datetime.utcnow()), as sse-starlette


async def test_catalog_changes_are_events(api: Client, registry_url: str) -> None:
    async with api.get("/v1/events") as resp, asyncio.timeout(DEADLINE_S):
        async with api.post("/v1/registries/", json={"url": f"{registry_url}/{MOCK}"}) as added:
            assert added.status == 200
        event = await anext(iter_sse(resp))
    assert event.event == "catalog.changed"
    assert "chat-mock-small" in json.loads(event.data)["added"]


async def test_shutdown_ends_open_streams(settings: Settings, nc: NATS, js: JetStreamContext) -> None:
    async with running(RegistrySync, settings):
        client: Client = TestClient(TestServer(create_app(settings, nc), host="127.0.0.1"))
        await client.start_server()
        try:
            resp = await client.get("/v1/events")
            assert resp.status == 200
            started = time.monotonic()
            await client.server.close()  # on_shutdown closes the stream: the body ends, nobody waits for a timeout
            async with asyncio.timeout(DEADLINE_S):
                assert await resp.content.read() == b""
            assert time.monotonic() - started < settings.shutdown_timeout_s
            resp.release()
        finally:
            await client.close()


async def test_event_sequences_are_ascii_digits(api: Client) -> None:
    """ "²" passes str.isdigit() but not int(): a 422 (or, for Last-Event-ID, ignored), never a 500."""
    async with api.get("/v1/events?since=%C2%B2") as resp:
        assert resp.status == 422
    async with api.get("/v1/events?since=99999999999999999999999") as resp:
        assert resp.status == 422
    async with api.get("/v1/events", headers={"Last-Event-ID": "\u00b2".encode().decode("latin-1")}) as resp:
        assert resp.status == 200  # not a sequence: the stream starts at ?since= (now)


async def test_event_stream_deletes_its_consumer_when_the_client_leaves(
    api: Client, js: JetStreamContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(streams, "PING_INTERVAL_S", 0.05)  # the handler notices the client left at its next ping

    async def consumers() -> int:
        return (await js.stream_info(subjects.EVENTS_STREAM)).state.consumer_count

    async with api.get("/v1/events") as resp:
        assert await resp.content.readuntil(b"\n\n") == b": ping\n\n"
        assert await consumers() == 1

    async def none_left() -> bool:
        return await consumers() == 0

    # Well before the ~5 s after which the server reaps an unwatched ephemeral consumer by itself.
    await wait_until(none_left, deadline_s=2.5, interval=0.05, what="the stream's consumer deleted")


async def test_bus_down_is_503_not_500(
    settings: Settings, nc: NATS, js: JetStreamContext, nats_server: EmbeddedNats
) -> None:
    """A JetStream call (here: creating the events consumer) while NATS is away answers premd's 503."""
    quick = msgspec.structs.replace(settings, request_timeout_s=0.5)
    async with gateway(quick) as client:
        await nats_server.stop()
        try:
            async with client.get("/v1/events") as resp:
                assert resp.status == 503
                # Which one depends on whether the gateway's own connection saw the server go first.
                assert (await resp.json())["detail"]["code"] in ("bus.timeout", "bus.disconnected")
        finally:
            await nats_server.start()

            async def reconnected() -> bool:
                return nc.is_connected

            await wait_until(reconnected, deadline_s=DEADLINE_S, interval=0.05, what="the test's client reconnected")


async def test_failure_mid_stream_cuts_the_stream_short(
    api: Client, js: JetStreamContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug after a stream started must not write a second status line into its body: the connection ends."""

    def broken(subject: str) -> str:
        raise RuntimeError("a bug")

    monkeypatch.setattr(events_routes, "event_name", broken)
    sid = new_id()
    async with api.get(f"/v1/events?service={sid}") as resp:
        assert resp.status == 200
        await publish_event(js, sid, "op1", "accepted")
        body = b""
        with pytest.raises(aiohttp.ClientPayloadError):
            async with asyncio.timeout(DEADLINE_S):
                async for chunk in resp.content.iter_any():
                    body += chunk
    assert b"HTTP/1.1" not in body and b"Internal Server Error" not in body


async def test_body_past_the_limit_is_413(settings: Settings, nc: NATS, js: JetStreamContext) -> None:
    small = msgspec.structs.replace(settings, max_body_bytes=1024)
    async with gateway(small) as client:
        async with client.post(
            "/v1/registries/", data=b" " * 2048, headers={"Content-Type": "application/json"}
        ) as resp:
            assert resp.status == 413
            assert (await resp.json())["detail"] == {
                "message": "body larger than 1024 bytes",
                "code": "request.too_large",
            }


# ---------------------------------------------------------------- with Docker: download, run, stop, remove


@pytest.fixture
async def pushed(docker: aiodocker.Docker, ref_image: str, oci_registry: OciRegistry) -> AsyncIterator[str]:
    """The reference image in the OCI registry under a unique name, absent locally."""
    async with in_registry(docker, oci_registry, ref_image, "gw") as remote:
        yield remote


@pytest.fixture
async def pushed_layer(docker: aiodocker.Docker, ref_image: str, oci_registry: OciRegistry) -> AsyncIterator[str]:
    """An image with a layer of its own in the OCI registry, absent locally: pulling it reports progress."""
    async with with_own_layer(docker, oci_registry, ref_image, "gw-layer", LAYER_BYTES) as remote:
        yield remote


async def sse_download(client: Client, service_id: str) -> list[tuple[bytes, dict[str, Any]]]:
    """Every message of the SSE download, raw frame and payload; asserts premd's framing."""
    frames: list[tuple[bytes, dict[str, Any]]] = []
    async with client.get(f"/v1/download-service-stream-sse/{service_id}") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "text/event-stream; charset=utf-8"
        assert resp.headers["Cache-Control"] == "no-cache"
        assert resp.headers["X-Accel-Buffering"] == "no"
        async with asyncio.timeout(120):
            while True:
                raw = await resp.content.readuntil(b"\r\n\r\n")
                if not raw:
                    break
                if raw.startswith(b": ping - "):
                    continue
                assert raw.startswith(b"data: ") and raw.endswith(b"\r\ndata: \r\n\r\n"), raw
                frames.append((raw, json.loads(raw[len(b"data: ") : -len(b"\r\ndata: \r\n\r\n")])))
    return frames


@pytest.mark.docker
async def test_download_run_stop_remove(full_api: Client, pushed_layer: str) -> None:
    api = full_api
    service_id = new_id("gw-life")
    async with api.post("/v1/services/", json=custom_manifest(service_id, pushed_layer)) as resp:
        assert resp.status == 200, await resp.text()
    try:
        await _lifecycle(api, service_id, pushed_layer)
    finally:
        await _stop_and_remove_volume(api, service_id)


async def _stop_and_remove_volume(api: Client, service_id: str) -> None:
    async with api.get(f"/v1/stop-service/{service_id}") as resp:
        await resp.read()
    async with api.get(f"/v1/remove-volume/prem-{service_id}-data") as resp:
        await resp.read()


async def _lifecycle(api: Client, service_id: str, image: str) -> None:
    frames = await sse_download(api, service_id)
    payloads = [payload for _, payload in frames]
    assert len(payloads) >= 3, payloads  # progress, then the end
    assert payloads[-1] == {"status": "Download complete", "percentage": 100}
    assert all(p["status"] != "Download complete" for p in payloads[:-1])
    percentages = [p["percentage"] for p in payloads]
    assert percentages == sorted(percentages)
    # Prem App refetches on "Download complete": the very next listing must show it downloaded.
    service = await get_json(api, f"/v1/services/{service_id}")
    assert service["downloaded"] is True and service["downloadedDockerImage"] == image

    async with api.post("/v1/run-service/", json={"id": service_id}) as resp:
        body = await resp.json()
        assert resp.status == 200, body
    assert body["message"].startswith("Service started successfully. Container running on port ")
    port = int(body["message"].rsplit(" ", 1)[-1].rstrip("."))
    service = await get_json(api, f"/v1/services/{service_id}")
    assert service["running"] is True and service["runningPort"] == port
    assert service["volumeName"] == f"prem-{service_id}-data"
    async with api.post("/v1/run-service/", json={"id": service_id}) as resp:
        assert await resp.json() == {"message": f"Service already running on port {port}."}

    stats = await get_json(api, f"/v1/stats/{service_id}")
    assert stats["id"] == service_id and list(stats) == [
        "id", "cpu_percentage", "memory_usage", "memory_limit", "memory_percentage",
        "storage_percentage", "storage_usage", "storage_limit",
    ]  # fmt: skip

    async def in_all_stats() -> bool:
        return service_id in [s["id"] for s in await get_json(api, "/v1/stats/")]

    await wait_until(in_all_stats, deadline_s=DEADLINE_S, what="the service in /v1/stats/")
    assert set(await get_json(api, "/v1/stats-all/")) >= {"cpu_percentage", "memory_usage", "storage_limit"}
    assert (await get_json(api, "/v1/gpu-stats-all/"))["gpus"] is None

    async with api.get(f"/v1/restart-service/{service_id}") as resp:
        assert await resp.json() == {"message": f"Service {service_id} restarted successfully."}
    assert (await get_json(api, f"/v1/services/{service_id}"))["running"] is True

    async with api.get(f"/v1/stop-service/{service_id}") as resp:
        assert await resp.json() == {"message": f"Service {service_id} successfully."}
    service = await get_json(api, f"/v1/services/{service_id}")
    assert service["running"] is False and service["runningPort"] is None and service["volumeName"] is None
    message = await detail(api, "GET", f"/v1/stop-service/{service_id}")
    assert message.startswith("Failed to stop container ")
    message = await detail(api, "GET", f"/v1/stats/{service_id}")
    assert message.startswith("Failed to remove image ")  # sic: premd's prefix

    async with api.get(f"/v1/remove-service/{service_id}") as resp:
        assert await resp.json() == {"message": f"Service {service_id} removed successfully."}
    service = await get_json(api, f"/v1/services/{service_id}")
    assert service["downloaded"] is False and service["downloadedDockerImage"] is None
    async with api.get(f"/v1/remove-service/{service_id}") as resp:
        assert await resp.json() == {"message": f"Image {image} not found."}


@pytest.mark.docker
async def test_blocking_and_ndjson_downloads_and_stop_all(full_api: Client, pushed: str) -> None:
    api = full_api
    first, second = new_id("gw-dl"), new_id("gw-dl")
    for service_id in (first, second):
        async with api.post("/v1/services/", json=custom_manifest(service_id, pushed)) as resp:
            assert resp.status == 200
    async with api.get(f"/v1/download-service-stream/{first}") as resp:
        assert resp.status == 200
        lines = [json.loads(line) for line in (await resp.read()).splitlines()]
    assert lines[-1] == {"status": f"Status: Downloaded image for {pushed}"}
    for line in lines[:-1]:
        assert set(line) == {"status", "progressDetail", "id"} and set(line["progressDetail"]) == {"current", "total"}
    async with api.get(f"/v1/download-service/{second}") as resp:  # the same image: already here
        assert await resp.json() == {"message": "Download image successfully."}
    try:
        for service_id in (first, second):
            async with api.post("/v1/run-service/", json={"id": service_id}) as resp:
                assert resp.status == 200, await resp.text()
        async with api.get("/v1/stop-all-services/") as resp:
            assert await resp.json() == {"message": "All services stopped successfully."}
        assert not any(s["running"] for s in await get_json(api, "/v1/services/"))
    finally:
        for service_id in (first, second):
            await _stop_and_remove_volume(api, service_id)


@pytest.mark.docker
async def test_failed_download_is_reported_never_complete(full_api: Client, oci_registry: OciRegistry) -> None:
    api = full_api
    service_id = new_id("gw-fail")
    image = f"{oci_registry.host}/premd-test/missing-{uuid.uuid4().hex[:8]}:1"
    async with api.post("/v1/services/", json=custom_manifest(service_id, image)) as resp:
        assert resp.status == 200
    payloads = [payload for _, payload in await sse_download(api, service_id)]
    assert payloads[-1]["status"] == "Error" and payloads[-1]["error"]
    assert "percentage" in payloads[-1]
    assert all(p["status"] != "Download complete" for p in payloads)
    message = await detail(api, "GET", f"/v1/download-service/{service_id}")
    assert message.startswith("Failed to download image ")
    async with api.get(f"/v1/download-service-stream/{service_id}") as resp:
        last = json.loads((await resp.read()).splitlines()[-1])
    assert set(last) == {"error", "errorDetail"}
    message = await detail(api, "POST", "/v1/run-service/", json={"id": service_id})
    assert message.startswith(f"Failed to create container for {service_id}: ")


@pytest.mark.docker
async def test_download_events_are_on_the_event_stream(full_api: Client, pushed: str) -> None:
    api = full_api
    service_id = new_id("gw-evt")
    async with api.post("/v1/services/", json=custom_manifest(service_id, pushed)) as resp:
        assert resp.status == 200
    async with api.get(f"/v1/events?service={service_id}") as events:
        await sse_download(api, service_id)
        seen: list[SseEvent] = []
        async with asyncio.timeout(DEADLINE_S):
            async for event in iter_sse(events):
                seen.append(event)
                if event.event in ("succeeded", "failed"):
                    break
    assert seen[0].event == "accepted" and seen[-1].event == "succeeded"
    assert {json.loads(event.data)["service_id"] for event in seen} == {service_id}


@asynccontextmanager
async def hanging_registry() -> AsyncIterator[str]:
    """An OCI registry that answers ``/v2/`` and then never answers: a pull that stays quiet."""
    release = asyncio.Event()

    async def base(_: web.Request) -> web.Response:
        return web.json_response({})

    async def hang(_: web.Request) -> web.Response:
        await release.wait()
        return web.Response(status=503)

    app = web.Application()
    app.router.add_get("/v2/", base)
    app.router.add_route("*", "/v2/{tail:.*}", hang)
    runner = web.AppRunner(app, shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"127.0.0.1:{runner.addresses[0][1]}"
    finally:
        release.set()
        await runner.cleanup()


@pytest.mark.docker
async def test_download_ends_with_an_error_when_the_scheduler_dies(
    settings: Settings, nc: NATS, js: JetStreamContext, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A quiet pull is checked at every ping: a dead scheduler ends the stream (Prem App is not left waiting)."""
    monkeypatch.setattr(streams, "PING_INTERVAL_S", 0.2)
    service_id = new_id("gw-dead")
    scheduler = SchedulerProcess(settings.nats_url or "", tmp_path / "scheduler.log", settings.nats_credentials or "")
    async with hanging_registry() as host, gateway(settings) as api:
        await put_catalog(js, ref_manifest(service_id, f"{host}/premd-test/hang:1"))
        await wait_listed(api, service_id)
        await scheduler.start(nc)
        try:
            async with api.get(f"/v1/download-service-stream-sse/{service_id}") as resp:
                assert resp.status == 200
                await wait_observed(js, service_id, lambda s: s.phase == "pulling")
                await scheduler.kill()
                async with asyncio.timeout(DEADLINE_S):
                    body = await resp.read()  # the stream must end by itself
        finally:
            await scheduler.kill()
    payloads = [json.loads(frame.split(b"\r\n")[0][len(b"data: ") :]) for frame in body.split(b"\r\n\r\n") if frame]
    payloads = [p for p in payloads if isinstance(p, dict)]
    assert payloads[-1]["status"] == "Error" and "scheduler" in payloads[-1]["error"], payloads
    assert all(p["status"] != "Download complete" for p in payloads)
