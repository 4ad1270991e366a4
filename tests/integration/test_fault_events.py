"""A lost final event (issue 9 defect 5): the blocking, NDJSON and SSE download routes end from the observed state
when the pull's ``succeeded`` or ``failed`` event never arrives, instead of pinging forever."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import aiodocker
import pytest

from gateway import streams
from scheduler.events import EventPublisher
from tests.integration import test_gateway_api as gateway_api
from tests.integration.test_gateway_api import Client, custom_manifest, new_id, sse_download
from tests.testbed.oci_registry import OciRegistry

full_api = gateway_api.full_api  # fixtures: premd in-process with real Docker, an image in the OCI registry
pushed = gateway_api.pushed

DEADLINE_S = 90


@pytest.fixture
def lose_final_events(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every succeeded/failed event of a pull is lost on the way (the scheduler's publish never reaches the bus)."""
    lost: list[str] = []
    real = EventPublisher.publish

    async def publish(self: EventPublisher, op: str, service_id: str, kind: Any, type_: Any, **f: Any) -> None:
        if kind == "pull" and type_ in ("succeeded", "failed"):
            lost.append(f"{service_id}:{type_}")
            return
        await real(self, op, service_id, kind, type_, **f)

    monkeypatch.setattr(EventPublisher, "publish", publish)
    monkeypatch.setattr(streams, "PING_INTERVAL_S", 1.0)  # the quiet interval after which state is trusted
    return lost


async def _add(api: Client, image: str) -> str:
    service_id = new_id("gw-lost")
    async with api.post("/v1/services/", json=custom_manifest(service_id, image)) as resp:
        assert resp.status == 200, await resp.text()
    return service_id


@pytest.mark.docker
async def test_downloads_end_from_state_when_the_succeeded_event_is_lost(
    full_api: Client, pushed: str, docker: aiodocker.Docker, lose_final_events: list[str]
) -> None:
    api = full_api
    async with asyncio.timeout(DEADLINE_S):
        first = await _add(api, pushed)
        async with api.get(f"/v1/download-service/{first}") as resp:
            assert resp.status == 200 and await resp.json() == {"message": "Download image successfully."}

        await docker.images.delete(pushed, force=True)
        second = await _add(api, pushed)
        async with api.get(f"/v1/download-service-stream/{second}") as resp:
            lines = [json.loads(line) for line in (await resp.read()).splitlines()]
        assert lines[-1] == {"status": f"Status: Downloaded image for {pushed}"}

        await docker.images.delete(pushed, force=True)
        third = await _add(api, pushed)
        payloads = [payload for _, payload in await sse_download(api, third)]
        assert payloads[-1] == {"status": "Download complete", "percentage": 100}
    assert [lost.split(":")[1] for lost in lose_final_events] == ["succeeded"] * 3


@pytest.mark.docker
async def test_downloads_end_as_failed_when_the_failed_event_is_lost(
    full_api: Client, oci_registry: OciRegistry, lose_final_events: list[str]
) -> None:
    api = full_api
    image = f"{oci_registry.host}/premd-test/missing-{uuid.uuid4().hex[:8]}:1"
    service_id = await _add(api, image)
    async with asyncio.timeout(DEADLINE_S):
        async with api.get(f"/v1/download-service/{service_id}") as resp:
            body = await resp.json()
            assert resp.status == 400 and body["detail"]["message"].startswith("Failed to download image "), body
        async with api.get(f"/v1/download-service-stream/{service_id}") as resp:
            last = json.loads((await resp.read()).splitlines()[-1])
        assert set(last) == {"error", "errorDetail"}
        payloads = [payload for _, payload in await sse_download(api, service_id)]
        assert payloads[-1]["status"] == "Error" and payloads[-1]["error"]
    assert lose_final_events and all(lost.endswith(":failed") for lost in lose_final_events)


async def test_a_final_event_that_cannot_be_published_is_retried_counted_and_logged(
    nc: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """No events stream on this server: every publish fails; the publisher says so instead of swallowing it."""
    publisher = EventPublisher(nc.jetstream())
    with caplog.at_level("WARNING", logger="scheduler.events"):
        await publisher.publish("op1", "svc", "pull", "succeeded", status="Download complete")
    assert publisher.lost == 1
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "lost after 5 attempt(s)" in errors[0].getMessage()
    assert len([r for r in caplog.records if r.levelname == "WARNING"]) == 4
