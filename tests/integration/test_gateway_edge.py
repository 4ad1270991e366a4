"""The gateway's edge on a real nats-server: proxy, CORS, security, and the start-up refusal."""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import msgspec
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from yarl import URL

from common import subjects
from common.jetstream import kv_bucket
from common.messages import ServiceState
from common.settings import Settings
from gateway.keys import VIEW
from tests.integration.edge_support import Client, gateway, new_sid, put_service, seen
from tests.testbed.containers import ContainerFactory
from tests.testbed.sse import iter_sse
from tests.testbed.util import free_port, wait_until

APP_ORIGIN = "http://localhost:3000"
EVIL_ORIGIN = "https://evil.example"
TOKEN_DELAY_S = 0.25
TOKENS = 5


def _chat(stream: bool, **extra: object) -> dict[str, object]:
    return {
        "model": "m",
        "messages": [{"role": "user", "content": "hello there"}],
        "stream": stream,
        "ref_tokens": TOKENS,
        "ref_token_delay_s": TOKEN_DELAY_S,
        **extra,
    }


async def _assert_streams_one_by_one(resp: aiohttp.ClientResponse) -> None:
    """The first token event arrives while the service is still producing the rest."""
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    events = [event async for event in iter_sse(resp)]
    tokens = [e for e in events if e.event == "completion"]
    assert len(tokens) == TOKENS
    assert events[-1].data == "[DONE]"
    # The service sleeps TOKEN_DELAY_S between tokens: buffering would deliver them all at once.
    spread = tokens[-1].arrived - tokens[0].arrived
    assert spread >= (TOKENS - 1) * TOKEN_DELAY_S * 0.8, spread


# ---------------------------------------------------------------- proxy


async def test_proxy_streams_chat_tokens_one_by_one(edge: tuple[Client, str]) -> None:
    client, sid = edge
    async with client.post(f"/proxy/{sid}/v1/chat/completions", json=_chat(True)) as resp:
        first = None
        async for event in iter_sse(resp):
            first = event
            break
        assert first is not None and first.event == "completion"
        # The service has not sent its last token yet: the rest of the stream is still to come.
        assert not resp.content.at_eof()
        rest = [e async for e in iter_sse(resp)]
        assert rest[-1].data == "[DONE]"
        assert rest[-1].arrived - first.arrived >= (TOKENS - 1) * TOKEN_DELAY_S * 0.8


async def test_proxy_forwards_method_path_query_headers_and_body(edge: tuple[Client, str]) -> None:
    client, sid = edge
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        async with client.request(
            method,
            f"/proxy/{sid}/echo/a%20b/c?x=1&y=two%20words",
            data=b"payload-" + method.encode(),
            headers={"X-Custom": "kept", "Content-Type": "text/plain", "Connection": "keep-alive, X-Hop", "X-Hop": "1"},
        ) as resp:
            assert resp.status == 200, await resp.text()
            echo = await resp.json()
        assert echo["method"] == method
        assert echo["path"] == "/echo/a%20b/c"
        assert echo["query"] == {"x": "1", "y": "two words"}
        assert echo["body_text"] == "payload-" + method
        headers = {k.lower(): v for k, v in echo["headers"].items()}
        assert headers["x-custom"] == "kept"
        assert headers["content-type"] == "text/plain"
        assert "x-hop" not in headers  # named in Connection: hop-by-hop
        assert headers["x-forwarded-for"] == "127.0.0.1"
        assert headers["x-forwarded-prefix"] == f"/proxy/{sid}"
        assert headers["x-forwarded-host"].startswith("127.0.0.1:")
    async with client.get(f"/proxy/{sid}/v1/") as resp:
        assert await resp.json() == {"status": True}
    async with client.get(f"/proxy/{sid}") as resp:  # the bare prefix reaches the service's root
        assert resp.status == 404
        assert "no route /" in (await resp.json())["error"]["message"]


async def test_proxy_streams_large_bodies_both_ways(edge: tuple[Client, str]) -> None:
    client, sid = edge
    chunk = os.urandom(1024 * 1024)
    parts = 24  # far above max_body_bytes (1 MiB): the proxy streams, it does not buffer
    digest = hashlib.sha256(chunk * parts).hexdigest()

    async def upload() -> AsyncIterator[bytes]:
        for _ in range(parts):
            yield chunk

    async with client.post(f"/proxy/{sid}/echo?raw=1", data=upload()) as resp:
        assert resp.status == 200
        seen_bytes = hashlib.sha256()
        total = 0
        async for piece in resp.content.iter_chunked(256 * 1024):
            seen_bytes.update(piece)
            total += len(piece)
    assert total == len(chunk) * parts
    assert seen_bytes.hexdigest() == digest


async def test_proxy_states_unknown_starting_stopped_unreachable(
    settings: Settings, nc: NATS, js: JetStreamContext
) -> None:
    starting, failed, stopped, down = new_sid(), new_sid(), new_sid(), new_sid()
    async with gateway(settings) as client:
        await put_service(js, starting, phase="starting")
        await put_service(js, failed, phase="failed", last_error="exited with code 3")
        await put_service(js, stopped, phase=None)
        await put_service(js, down, host_port=free_port())
        for sid in (starting, failed, down):
            await seen(client, sid)
        await client.app[VIEW].catalog.entries_mirror.wait_for(lambda v: subjects.catalog_key(stopped) in v, 10.0)

        async with client.get("/proxy/nope/v1/") as resp:
            assert resp.status == 404
            assert (await resp.json())["detail"]["code"] == "service.not_found"
        async with client.post(f"/proxy/{starting}/v1/chat/completions", json={}) as resp:
            assert resp.status == 503
            assert resp.headers["Retry-After"] == "5"
            assert (await resp.json())["detail"]["code"] == "service.not_ready"
        async with client.get(f"/proxy/{failed}/v1/") as resp:
            assert resp.status == 409
            body = await resp.json()
            assert body["detail"]["code"] == "service.not_running"
            assert "exited with code 3" in body["detail"]["message"]
        async with client.get(f"/proxy/{stopped}/v1/") as resp:
            assert resp.status == 409
        async with client.get(f"/proxy/{down}/v1/") as resp:
            assert resp.status == 502
            detail = (await resp.json())["detail"]
            assert detail["code"] == "proxy.unreachable"
            assert "Errno" not in detail["message"] and "Traceback" not in detail["message"]


async def test_proxy_bridges_websockets(settings: Settings, nc: NATS, js: JetStreamContext) -> None:
    async def ws_echo(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(protocols=("v1.echo",))
        await ws.prepare(request)
        await ws.send_str(f"path={request.path_qs}")
        async for msg in ws:
            if msg.type is aiohttp.WSMsgType.TEXT:
                await ws.send_str("echo:" + msg.data)
            elif msg.type is aiohttp.WSMsgType.BINARY:
                await ws.send_bytes(msg.data[::-1])
        return ws

    upstream = web.Application()
    upstream.router.add_get("/ws", ws_echo)
    server = TestServer(upstream, host="127.0.0.1")
    await server.start_server()
    sid = new_sid()
    try:
        async with gateway(settings) as client:
            await put_service(js, sid, host_port=server.port)
            await seen(client, sid, "ready")
            async with client.ws_connect(f"/proxy/{sid}/ws?q=1", protocols=("v1.echo",)) as ws:
                assert ws.protocol == "v1.echo"
                assert await ws.receive_str(timeout=5) == "path=/ws?q=1"
                await ws.send_str("hi")
                assert await ws.receive_str(timeout=5) == "echo:hi"
                await ws.send_bytes(b"abc")
                assert await ws.receive_bytes(timeout=5) == b"cba"
    finally:
        await server.close()


# ---------------------------------------------------------------- CORS


async def test_cors_preflight_and_headers_on_every_response(edge: tuple[Client, str]) -> None:
    client, sid = edge
    preflight = {
        "Origin": APP_ORIGIN,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type, x-stainless-os",
    }
    for path in (f"/proxy/{sid}/v1/chat/completions", "/v1/run-service/", "/v1/chat/completions", "/anything"):
        async with client.options(path, headers=preflight) as resp:
            assert resp.status == 204, path
            assert resp.headers["Access-Control-Allow-Origin"] == APP_ORIGIN
            assert resp.headers["Access-Control-Allow-Credentials"] == "true"
            assert "POST" in resp.headers["Access-Control-Allow-Methods"]
            assert resp.headers["Access-Control-Allow-Headers"] == "content-type, x-stainless-os"
            assert resp.headers["Access-Control-Max-Age"] == "600"
            assert "Origin" in resp.headers["Vary"]
    async with client.options("/v1/services/", headers={**preflight, "Origin": EVIL_ORIGIN}) as resp:
        assert resp.status == 403
        assert "Access-Control-Allow-Origin" not in resp.headers

    # Streamed proxy answers, errors and redirects carry the headers too.
    origin = {"Origin": APP_ORIGIN}
    async with client.post(
        f"/proxy/{sid}/v1/chat/completions", json=_chat(True, ref_token_delay_s=0), headers=origin
    ) as resp:
        assert resp.headers["Access-Control-Allow-Origin"] == APP_ORIGIN
        assert resp.headers["Access-Control-Allow-Credentials"] == "true"
        await resp.read()
    async with client.get("/proxy/unknown/v1/", headers=origin) as resp:
        assert resp.status == 404
        assert resp.headers["Access-Control-Allow-Origin"] == APP_ORIGIN
    async with client.get("/v1/", headers={"Origin": "tauri://localhost"}) as resp:
        assert resp.headers["Access-Control-Allow-Origin"] == "tauri://localhost"
    async with client.get("/v1/", headers={"Origin": EVIL_ORIGIN}) as resp:
        assert resp.status == 200  # a read: answered, but the browser will not let the page see it
        assert "Access-Control-Allow-Origin" not in resp.headers
        assert resp.headers["Vary"] == "Origin"


# ---------------------------------------------------------------- security


async def test_foreign_site_cannot_stop_a_service(edge: tuple[Client, str], nc: NATS) -> None:
    client, sid = edge
    commands = await nc.subscribe(f"{subjects.PREFIX}.scheduler.>")
    await nc.flush()
    try:
        refused = [
            ("GET", f"/v1/stop-service/{sid}", {"Origin": EVIL_ORIGIN}),
            ("GET", "/v1/system-prune/", {"Origin": "null"}),
            ("GET", f"/v1/stop-service/{sid}", {"Sec-Fetch-Site": "cross-site"}),  # <img src=...>: no Origin
            ("POST", "/v1/run-service/", {"Origin": EVIL_ORIGIN}),
            ("POST", f"/proxy/{sid}/v1/chat/completions", {"Origin": EVIL_ORIGIN}),
            ("POST", "/v1/chat/completions", {"Origin": "http://localhost.evil.example:3000"}),
            ("GET", f"/proxy/{sid}/ws", {"Origin": EVIL_ORIGIN, "Upgrade": "websocket", "Connection": "Upgrade"}),
        ]
        for method, path, headers in refused:
            async with client.request(method, path, headers=headers, json={"id": sid}) as resp:
                assert resp.status == 403, (method, path, headers)
                assert (await resp.json())["detail"]["code"].startswith("security.")
        await nc.flush()
        assert commands.pending_msgs == 0  # nothing reached the scheduler
    finally:
        await commands.unsubscribe()
    state = client.app[VIEW].state(sid)
    assert state is not None and state.phase == "ready"

    # Allowed origins, what the user typed and clients without Origin go through. (Same-site without an Origin,
    # an <img> on a service's own port, is refused since issue 10: tests/integration/test_service_origins.py.)
    for headers in ({"Origin": APP_ORIGIN, "Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "none"}, {}):
        async with client.post(f"/proxy/{sid}/echo", data=b"x", headers=headers) as resp:
            assert resp.status == 200, headers
    async with client.get(f"/proxy/{sid}/v1/", headers={"Origin": EVIL_ORIGIN}) as resp:
        assert resp.status == 200  # a read through the proxy: allowed, but not readable by the page


async def test_rebound_host_names_are_refused_without_token(edge: tuple[Client, str]) -> None:
    client, sid = edge
    async with client.get(f"/proxy/{sid}/v1/", headers={"Host": "attacker.example:54321"}) as resp:
        assert resp.status == 403
        assert (await resp.json())["detail"]["code"] == "security.host_not_allowed"
    for host in ("localhost:54321", "app.localhost", "[::1]:54321", "127.0.0.2"):
        async with client.get(f"/proxy/{sid}/v1/", headers={"Host": host}) as resp:
            assert resp.status == 200, host


async def test_token_required_everywhere_but_health(
    settings: Settings, nc: NATS, js: JetStreamContext, ref_port: int
) -> None:
    token = "s3cret-token"
    sid = new_sid()
    secured = msgspec.structs.replace(settings, api_token=token)
    async with gateway(secured) as client:
        await put_service(js, sid, host_port=ref_port)
        await seen(client, sid, "ready")
        for path in (f"/proxy/{sid}/v1/", "/metrics", "/openapi.json", "/v1/models"):
            async with client.get(path) as resp:
                assert resp.status == 401, path
                assert resp.headers["WWW-Authenticate"] == "Bearer"
                assert (await resp.json())["detail"]["code"] == "auth.required"
            async with client.get(path, headers={"Authorization": "Bearer wrong"}) as resp:
                assert resp.status == 401
                assert (await resp.json())["detail"]["code"] == "auth.invalid"
            async with client.get(path, headers={"Authorization": f"Bearer {token}"}) as resp:
                assert resp.status == 200, path
        async with client.get("/v1/") as resp:
            assert resp.status == 200
        async with client.options(
            "/v1/services/", headers={"Origin": APP_ORIGIN, "Access-Control-Request-Method": "GET"}
        ) as resp:
            assert resp.status == 204  # preflights never carry credentials
        # EventSource cannot send headers: the query token is accepted for event streams only.
        async with client.get(f"/proxy/{sid}/v1/?access_token={token}") as resp:
            assert resp.status == 401
        async with client.get(
            f"/proxy/{sid}/echo?access_token={token}&keep=1", headers={"Accept": "text/event-stream"}
        ) as resp:
            assert resp.status == 200
            echo = await resp.json()
        assert echo["query"] == {"keep": "1"}  # premd's token is not passed on to the service
        async with client.get(  # the same parameter, percent-encoded: the check decodes it, so must the filter
            URL(f"/proxy/{sid}/echo?access%5Ftoken={token}&keep=1", encoded=True),
            headers={"Accept": "text/event-stream"},
        ) as resp:
            assert resp.status == 200
            assert (await resp.json())["query"] == {"keep": "1"}
        # Header bytes that are not UTF-8 are a wrong token (401), not a crash (500).
        assert await _raw_status(client, b"Authorization: Bearer \xff\xfe") == 401
        async with client.get(f"/proxy/{sid}/echo", headers={"Authorization": f"Bearer {token}"}) as resp:
            assert "authorization" not in {k.lower() for k in (await resp.json())["headers"]}
        # With a token, any Host is fine (rebinding cannot guess the token).
        async with client.get("/v1/models", headers={"Host": "premd.lan", "Authorization": f"Bearer {token}"}) as resp:
            assert resp.status == 200


async def _raw_status(client: Client, header: bytes) -> int:
    """The status of ``GET /v1/models`` sent with ``header`` as raw bytes (aiohttp's client only sends text)."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    try:
        writer.write(b"GET /v1/models HTTP/1.1\r\nHost: localhost\r\n" + header + b"\r\nConnection: close\r\n\r\n")
        await writer.drain()
        status_line = await reader.readline()
    finally:
        writer.close()
        await writer.wait_closed()
    return int(status_line.split()[1])


def test_premd_refuses_to_listen_on_all_interfaces_without_token(tmp_path: Path) -> None:
    premd = Path(sys.executable).parent / "premd"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREMD_")}
    env.update({"PREMD_HOST": "0.0.0.0", "PREMD_DATA_DIR": str(tmp_path), "PREMD_NATS_URL": "nats://127.0.0.1:1"})
    done = subprocess.run([str(premd), "serve"], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "PREMD_HOST" in lines[0] and "PREMD_API_TOKEN" in lines[0]


# ---------------------------------------------------------------- Docker: the "done when" run on a real container


@pytest.mark.docker
async def test_done_when_on_a_real_service_container(
    settings: Settings, nc: NATS, js: JetStreamContext, ref_image: str, make_container: ContainerFactory
) -> None:
    container = await make_container(ref_image, env={"REF_TOKEN_DELAY_S": str(TOKEN_DELAY_S)})
    await container.wait_http("/v1/", deadline_s=30)
    sid = new_sid()
    async with gateway(settings) as client:
        await put_service(js, sid, host_port=container.ports[8000])
        await seen(client, sid, "ready")
        async with client.post(f"/proxy/{sid}/v1/chat/completions", json=_chat(True)) as resp:
            await _assert_streams_one_by_one(resp)
        async with client.post("/v1/embeddings", json={"model": sid, "input": ["a", "b"]}) as resp:
            assert resp.status == 200
            body = await resp.json()
        assert [len(item["embedding"]) for item in body["data"]] == [384, 384]
        assert body["model"] == sid
        async with client.get(f"/v1/stop-service/{sid}", headers={"Origin": EVIL_ORIGIN}) as resp:
            assert resp.status == 403
        assert (await container.show())["State"]["Running"] is True
        observed = await kv_bucket(js, subjects.KV_OBSERVED)
        entry = await observed.get(sid)
        assert entry.value is not None
        assert msgspec.json.decode(entry.value, type=ServiceState).phase == "ready"


async def test_tokens_keep_their_pace_through_the_proxy(edge: tuple[Client, str]) -> None:
    """The same one-by-one check as the Docker test, on the loopback subprocess."""
    client, sid = edge
    async with client.post(f"/proxy/{sid}/v1/chat/completions", json=_chat(True)) as resp:
        await _assert_streams_one_by_one(resp)


async def test_client_leaving_mid_stream_ends_the_exchange_quietly(
    edge: tuple[Client, str], caplog: pytest.LogCaptureFixture
) -> None:
    client, sid = edge
    slow = _chat(True, ref_tokens=40, ref_token_delay_s=0.05)
    async with client.post(f"/proxy/{sid}/v1/chat/completions", json=slow) as resp:
        async for _ in iter_sse(resp):
            break
        resp.close()  # the browser tab is closed after the first token

    async def finished() -> bool:
        async with client.get("/metrics") as metrics:
            return f'premd_proxy_duration_seconds_count{{service="{sid}"}} 1' in await metrics.text()

    await wait_until(finished, deadline_s=10.0, interval=0.05, what="the proxied exchange to end")
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")], caplog.text
    async with client.get(f"/proxy/{sid}/v1/") as again:  # the pool still works
        assert again.status == 200
