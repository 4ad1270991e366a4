"""Bounded load on ``premd serve`` with the real engine (issue 9 fault suite): 100 concurrent start/stop commands
over 20 services while 200 SSE clients follow /v1/events for 60 s. Every command gets a definite answer (no 5xx,
no hang), premd converges (stop-all leaves nothing running, one container per service at most), every SSE client
stays connected, and the gateway's memory stays bounded."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import aiodocker
import aiohttp
import pytest

from tests.integration.test_gateway_api import custom_manifest
from tests.integration.test_serve import PREMD, _env, _wait_health
from tests.testbed.util import wait_until

SERVICES = 20
COMMANDS = 100
SSE_CLIENTS = 200
SSE_SECONDS = 60.0
RSS_GROWTH_LIMIT = 256 * 1024 * 1024
"""premd (all four components in one process) may grow this much under the load, no more."""


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


async def _sse_client(http: aiohttp.ClientSession, url: str, until: float) -> int:
    """Follow the event stream until ``until``; returns the bytes read (the stream must stay open all along)."""
    read = 0
    async with http.get(url, timeout=aiohttp.ClientTimeout(total=None, sock_read=30)) as resp:
        assert resp.status == 200
        while time.monotonic() < until:
            try:
                chunk = await asyncio.wait_for(resp.content.readany(), max(0.1, until - time.monotonic()))
            except TimeoutError:
                break
            if not chunk:
                raise AssertionError("the event stream ended early")
            read += len(chunk)
    return read


@pytest.mark.docker
async def test_concurrent_commands_and_sse_clients_under_a_memory_bound(
    tmp_path: Path, ref_image: str, docker: aiodocker.Docker
) -> None:
    env = _env(tmp_path, PREMD_LOG_LEVEL="WARNING")
    port = int(env["PREMD_PORT"])
    base = f"http://127.0.0.1:{port}"
    ids = [f"load-{uuid.uuid4().hex[:8]}-{i}" for i in range(SERVICES)]
    with (tmp_path / "premd.log").open("wb") as out:
        premd = await asyncio.create_subprocess_exec(PREMD, "serve", env=env, stderr=out)
    connector = aiohttp.TCPConnector(limit=0)
    try:
        await _wait_health(port, premd)
        async with aiohttp.ClientSession(connector=connector) as http:

            async def ready() -> bool:
                async with http.get(f"{base}/readyz") as resp:
                    return resp.status == 200

            await wait_until(ready, deadline_s=60, what="premd ready")
            for service_id in ids:
                async with http.post(f"{base}/v1/services/", json=custom_manifest(service_id, ref_image)) as resp:
                    assert resp.status == 200, await resp.text()
            before = _rss(premd.pid)
            until = time.monotonic() + SSE_SECONDS
            clients = [asyncio.create_task(_sse_client(http, f"{base}/v1/events", until)) for _ in range(SSE_CLIENTS)]

            async def command(i: int) -> tuple[str, int, Any]:
                service_id = ids[i % SERVICES]
                if (i // SERVICES) % 2 == 0:
                    call = http.post(f"{base}/v1/run-service/", json={"id": service_id})
                else:
                    call = http.get(f"{base}/v1/stop-service/{service_id}")
                async with call as resp:
                    return service_id, resp.status, await resp.json()

            async with asyncio.timeout(SSE_SECONDS + 120):
                answers = await asyncio.gather(*(command(i) for i in range(COMMANDS)))
                streamed = await asyncio.gather(*clients)
            peak = _rss(premd.pid)
            failures = [a for a in answers if a[1] >= 500]
            assert failures == [], failures
            assert {status for _, status, _ in answers} <= {200, 400, 409}, answers
            assert all(n > 0 for n in streamed), "every SSE client saw the commands' events"
            assert peak - before < RSS_GROWTH_LIMIT, (before, peak)

            async with http.get(f"{base}/v1/stop-all-services/") as resp:
                assert resp.status == 200, await resp.text()
            async with http.get(f"{base}/v1/services/") as resp:
                listed = {s["id"]: s for s in await resp.json()}
            assert not any(listed[s]["running"] for s in ids)
            for service_id in ids:
                found = await docker.containers.list(all=True, filters={"name": [service_id]})
                assert len(found) <= 1, f"{service_id}: {len(found)} containers"
    finally:
        if premd.returncode is None:
            premd.terminate()
            await asyncio.wait_for(premd.wait(), 60)
        await connector.close()
        for service_id in ids:
            for container in await docker.containers.list(all=True, filters={"name": [service_id]}):
                await container.delete(force=True)
            try:
                await (await docker.volumes.get(f"prem-{service_id}-data")).delete()  # type: ignore[no-untyped-call]
            except aiodocker.DockerError:
                pass
