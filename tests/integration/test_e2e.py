"""premd as a user runs it (`premd serve`, embedded NATS, real Docker, a registry file), driven like Prem App.

Registry -> listing -> SSE download from a real OCI registry -> run -> chat through the proxy (streamed)
-> stop -> restart of premd keeps the custom registry -> SIGTERM leaves no container running.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiodocker
import aiohttp
import pytest

from tests.support.images import in_registry
from tests.support.registry_files import chat_manifest
from tests.support.scheduler_bed import cleanup_service
from tests.testbed.oci_registry import OciRegistry
from tests.testbed.sse import SseEvent, iter_sse
from tests.testbed.util import StopWaiting, free_port, wait_until

pytestmark = pytest.mark.docker

PREMD = str(Path(sys.executable).parent / "premd")
ORIGIN = "http://localhost:1420"  # Prem App's dev origin, allowed by default


async def _start(env: dict[str, str]) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(PREMD, "serve", env=env, stderr=asyncio.subprocess.DEVNULL)
    base = f"http://127.0.0.1:{env['PREMD_PORT']}"
    async with aiohttp.ClientSession() as session:

        async def ready() -> bool:
            if proc.returncode is not None:
                raise StopWaiting("premd exited during start-up")
            async with session.get(f"{base}/readyz") as resp:
                return resp.status == 200

        await wait_until(ready, deadline_s=60, what="premd ready")
    return proc


async def _stop(proc: asyncio.subprocess.Process) -> int:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
    async with asyncio.timeout(60):
        return await proc.wait()


@pytest.fixture
async def pushed_image(docker: aiodocker.Docker, ref_image: str, oci_registry: OciRegistry) -> AsyncIterator[str]:
    async with in_registry(docker, oci_registry, ref_image, "e2e") as remote:
        yield remote


async def test_prem_app_flow(tmp_path: Path, pushed_image: str, docker: aiodocker.Docker) -> None:
    service_id = f"e2e-chat-{uuid.uuid4().hex[:8]}"
    manifest = chat_manifest(service_id, pushed_image, "E2E Chat", futureKey={"kept": True})
    registry_file = tmp_path / "registry.json"
    registry_file.write_text(json.dumps([manifest]))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREMD_", "PREM_"))}
    env.update(
        PREMD_DATA_DIR=str(tmp_path / "data"),
        PREMD_PORT=str(free_port()),
        PREMD_NATS_PORT=str(free_port()),
        PREM_REGISTRY_URL=registry_file.as_uri(),
    )
    base = f"http://127.0.0.1:{env['PREMD_PORT']}"
    headers = {"Origin": ORIGIN}
    proc = await _start(env)
    try:
        async with aiohttp.ClientSession(headers=headers) as http:
            service: dict[str, Any] = {}

            async def listed() -> bool:  # the first fetch of the registry runs in the background
                nonlocal service
                async with http.get(f"{base}/v1/services/{service_id}") as resp:
                    if resp.status == 200:
                        service = await resp.json()
                    return resp.status == 200

            await wait_until(listed, deadline_s=30, what="the service listed")
            assert service["supported"] is True and service["downloaded"] is False and service["running"] is False
            assert service["baseUrl"].endswith(f"/proxy/{service_id}")

            # Download as Prem App does: EventSource, unnamed events, "Download complete" last.
            percentages: list[float] = []
            async with http.get(f"{base}/v1/download-service-stream-sse/{service_id}") as resp:
                assert resp.status == 200
                assert resp.headers["Access-Control-Allow-Origin"] == ORIGIN
                async for event in iter_sse(resp):
                    assert event.event == "message"
                    payload = json.loads(event.data)
                    if payload["status"] == "Download complete":
                        async with http.get(f"{base}/v1/services/{service_id}") as check:
                            assert (await check.json())["downloaded"] is True
                        break
                    assert "error" not in payload, payload
                    percentages.append(payload["percentage"])
            assert percentages == sorted(percentages)

            async with http.post(f"{base}/v1/run-service/", json={"id": service_id}) as resp:
                body = await resp.json()
                assert resp.status == 200, body
                assert body["message"].startswith("Service started successfully. Container running on port ")
            async with http.get(f"{base}/v1/services/{service_id}") as resp:
                service = await resp.json()
            assert service["running"] is True and service["volumeName"] == f"prem-{service_id}-data"

            # Chat through the proxy (baseUrl), streamed as the browser reads it.
            chat = {"model": service_id, "messages": [{"role": "user", "content": "hello"}], "stream": True}
            events: list[SseEvent] = []

            async def chatted() -> bool:  # running != ready: the proxy answers 503 until the health check passes
                async with http.post(f"{service['baseUrl']}/v1/chat/completions", json=chat) as resp:
                    if resp.status == 503:
                        return False
                    assert resp.status == 200
                    events.extend([e async for e in iter_sse(resp)])
                    return True

            await wait_until(chatted, deadline_s=60, what="a chat answer through the proxy")
            assert events[-1].data == "[DONE]" and len(events) > 2

            async with http.get(f"{base}/v1/stop-service/{service_id}") as resp:
                assert resp.status == 200
            async with http.get(f"{base}/v1/services/{service_id}") as resp:
                service = await resp.json()
            assert service["running"] is False and service["runningPort"] is None

            # A foreign web page cannot start it again.
            async with http.post(
                f"{base}/v1/run-service/", json={"id": service_id}, headers={"Origin": "https://evil.example"}
            ) as resp:
                assert resp.status == 403
    finally:
        assert await _stop(proc) == 0

    # premd restarted on the same data directory: the catalog and the downloaded state are still there.
    proc = await _start(env)
    try:
        async with aiohttp.ClientSession(headers=headers) as http:
            async with http.get(f"{base}/v1/services/{service_id}") as resp:
                service = await resp.json()
            assert resp.status == 200 and service["downloaded"] is True
    finally:
        assert await _stop(proc) == 0
        await cleanup_service(docker, service_id)
