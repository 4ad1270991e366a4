"""OpenAI-compatible routes, /openapi.json and /docs, and /metrics, on a real nats-server."""

from __future__ import annotations

import time

import aiohttp
import msgspec
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from openapi_spec_validator import validate

from common import subjects
from common.messages import OperationEvent
from common.settings import Settings
from tests.integration.edge_support import Client, gateway, new_sid, put_service, seen
from tests.testbed.sse import iter_sse
from tests.testbed.util import wait_until

# ---------------------------------------------------------------- OpenAI routes


async def test_requests_reach_the_service_named_by_model(edge: tuple[Client, str]) -> None:
    client, sid = edge
    async with client.post("/v1/embeddings", json={"model": sid, "input": "hello"}) as resp:
        assert resp.status == 200
        body = await resp.json()
    assert body["model"] == sid and len(body["data"][0]["embedding"]) == 384

    # The body is forwarded byte for byte: odd spacing and unknown keys survive.
    raw = b'{"model" : "%s",  "input": ["x"], "extra": {"k": [1, 2]}}' % sid.encode()
    async with client.post("/v1/images/generations", data=raw, headers={"Content-Type": "application/json"}) as resp:
        assert resp.status == 200
        assert (await resp.json())["data"][0]["b64_json"]

    chat = {"model": sid, "messages": [{"role": "user", "content": "hi"}], "stream": True, "ref_tokens": 3}
    async with client.post("/v1/chat/completions", json=chat) as resp:
        events = [e async for e in iter_sse(resp)]
    assert [e.event for e in events] == ["completion", "completion", "completion", "done"]
    assert events[-1].data == "[DONE]"

    form = aiohttp.FormData()
    form.add_field("model", sid)
    form.add_field("file", b"\x00RIFF fake audio" * 1000, filename="a.wav", content_type="audio/wav")
    async with client.post("/v1/audio/transcriptions", data=form) as resp:
        assert resp.status == 200
        assert (await resp.json())["text"].startswith("reference transcription of")
    async with client.post(
        f"/v1/audio/transcriptions?model={sid}",
        data=b"--x--",
        headers={"Content-Type": "multipart/form-data; boundary=x"},
    ) as resp:
        assert resp.status == 200  # a2t-whisper's own convention: model in the query


async def test_openai_errors(edge: tuple[Client, str], settings: Settings, nc: NATS) -> None:
    client, sid = edge
    cases = [
        ({"model": "gpt-4", "input": "x"}, 404, "model_not_found"),
        ({"input": "x"}, 400, "request.invalid"),
        (b"{not json", 400, "request.invalid"),
    ]
    for body, status, code in cases:
        kwargs = {"data": body} if isinstance(body, bytes) else {"json": body}
        async with client.post("/v1/embeddings", **kwargs) as resp:
            assert resp.status == status, body
            error = (await resp.json())["error"]
            assert error["code"] == code and error["message"] and error["type"]
    async with client.post(
        "/v1/audio/transcriptions", data=b"--x--", headers={"Content-Type": "multipart/form-data; boundary=x"}
    ) as resp:
        assert resp.status == 400

    small = msgspec.structs.replace(settings, openai_max_body_bytes=1024)
    async with gateway(small) as limited:
        async with limited.post("/v1/embeddings", json={"model": sid, "input": "x" * 2048}) as resp:
            assert resp.status == 413
            assert (await resp.json())["error"]["code"] == "request.too_large"


async def test_models_lists_ready_services(edge: tuple[Client, str], js: JetStreamContext) -> None:
    client, sid = edge
    stopped = new_sid()
    await put_service(js, stopped, phase="stopped")
    await seen(client, stopped)
    async with client.get("/v1/models") as resp:
        listing = await resp.json()
    assert listing["object"] == "list"
    assert [m["id"] for m in listing["data"]] == [sid]
    assert listing["data"][0]["object"] == "model" and listing["data"][0]["owned_by"] == "premd"
    async with client.get(f"/v1/models/{sid}") as resp:
        assert (await resp.json())["id"] == sid
    async with client.get(f"/v1/models/{stopped}") as resp:
        assert resp.status == 404


# ---------------------------------------------------------------- OpenAPI and docs


async def test_openapi_is_valid_and_lists_every_route(edge: tuple[Client, str]) -> None:
    client, _ = edge
    async with client.get("/openapi.json") as resp:
        assert resp.status == 200
        spec = await resp.json()
    validate(spec)
    assert spec["info"]["title"] == "Prem Daemon"
    app = client.app
    for route in app.router.routes():
        if route.resource is None:
            continue
        path = route.resource.canonical
        assert path in spec["paths"], path
        method = "get" if route.method == "*" else route.method.lower()
        if method != "head":
            assert method in spec["paths"][path], (method, path)
    embeddings = spec["paths"]["/v1/embeddings"]["post"]
    assert embeddings["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/ModelRequest")
    assert spec["paths"]["/v1/models"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    async with client.get("/docs") as resp:
        assert resp.status == 200
        assert resp.content_type == "text/html"
        page = await resp.text()
    assert "/proxy/{service_id}/{path}" in page and "/v1/chat/completions" in page and "<script" not in page


# ---------------------------------------------------------------- metrics


async def test_metrics_exposition(edge: tuple[Client, str], nc: NATS) -> None:
    client, sid = edge
    async with client.post(f"/proxy/{sid}/echo?raw=1", data=b"x" * 1000) as resp:
        assert len(await resp.read()) == 1000
    async with client.get("/v1/nothing-here") as resp:
        assert resp.status == 404
    async with client.get("/v1/stop-service/x", headers={"Origin": "https://evil.example"}) as resp:
        assert resp.status == 403
    for result in ("succeeded", "failed"):
        event = OperationEvent(operation_id="op", service_id=sid, kind="pull", type=result, at=time.time())
        await nc.publish(subjects.service_event(sid, "op", result), msgspec.json.encode(event))

    async def counted() -> bool:
        async with client.get("/metrics") as resp:
            text = await resp.text()
        return 'premd_operations_total{kind="pull",result="failed"} 1' in text

    await wait_until(counted, deadline_s=5.0, interval=0.02, what="operations counted")
    async with client.get("/metrics") as resp:
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = await resp.text()
    assert 'premd_http_requests_total{route="/proxy/{service_id}/{path}",method="POST",status="200"} 1' in text
    assert 'premd_http_requests_total{route="unmatched",method="GET",status="404"} 1' in text
    assert 'premd_http_refused_total{code="security.foreign_origin"} 1' in text
    assert f'premd_proxy_bytes_total{{service="{sid}",direction="in"}} 1000' in text
    assert f'premd_proxy_bytes_total{{service="{sid}",direction="out"}} 1000' in text
    assert f'premd_proxy_requests_total{{service="{sid}",status="200"}} 1' in text
    assert f'premd_proxy_upstream_latency_seconds_count{{service="{sid}"}} 1' in text
    assert f'premd_proxy_duration_seconds_bucket{{service="{sid}",le="+Inf"}} 1' in text
    assert 'premd_services{phase="ready"} 1' in text
    assert 'premd_operations_total{kind="pull",result="succeeded"} 1' in text
    for line in text.splitlines():  # every sample line: name{labels} value
        if not line.startswith("#"):
            float(line.rsplit(" ", 1)[1])
