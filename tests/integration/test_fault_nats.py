"""The bus failing under premd (issue 9 defect 2): the embedded nats-server killed, supervised and restarted on its
JetStream store; routes answer 503 at once while the bus is down; premd exits non-zero when it cannot come back."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from common.embedded_nats import EmbeddedNats
from common.settings import Settings
from gateway.app import create_app
from tests.integration.test_serve import PREMD, _children, _env, _wait_health
from tests.testbed.registries import REGISTRIES_DIR
from tests.testbed.util import StopWaiting, wait_until

MOCK = REGISTRIES_DIR / "prem-daemon-mock-manifests.json"


def _nats_child(pid: int) -> int:
    """The pid of premd's embedded nats-server (its only child process named nats-server)."""
    found = [c for c in _children(pid) if Path(f"/proc/{c}/comm").read_text().strip() == "nats-server"]
    if len(found) != 1:
        raise AssertionError(f"expected one nats-server child of {pid}, found {found}")
    return found[0]


async def _next_nats_child(proc: asyncio.subprocess.Process, old: int) -> int:
    new = 0

    async def restarted() -> bool:
        nonlocal new
        if proc.returncode is not None:
            raise StopWaiting(f"premd exited ({proc.returncode})")
        try:
            new = _nats_child(proc.pid)
        except (AssertionError, OSError):
            return False
        return new != old

    await wait_until(restarted, deadline_s=30, what="a restarted nats-server")
    return new


@pytest.fixture
async def premd_serve(tmp_path: Path) -> AsyncIterator[tuple[asyncio.subprocess.Process, dict[str, str], Path]]:
    env = _env(tmp_path, PREMD_REGISTRY_FILE_DIR=str(REGISTRIES_DIR))  # the test adds a file registry
    log = tmp_path / "premd.log"
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(PREMD, "serve", env=env, stderr=out)
    try:
        yield proc, env, log
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def test_killed_nats_server_is_restarted_with_its_data_and_premd_recovers(
    premd_serve: tuple[asyncio.subprocess.Process, dict[str, str], Path],
) -> None:
    proc, env, log = premd_serve
    base = f"http://127.0.0.1:{env['PREMD_PORT']}"
    await _wait_health(int(env["PREMD_PORT"]), proc)
    async with aiohttp.ClientSession() as http:

        async def ready() -> bool:
            async with http.get(f"{base}/readyz") as resp:
                return resp.status == 200

        await wait_until(ready, deadline_s=30, what="premd ready")

        async def docker_seen() -> bool:
            async with http.get(f"{base}/readyz") as resp:
                return bool((await resp.json())["docker"] == "available")

        await wait_until(docker_seen, deadline_s=30, what="readiness reporting the Docker engine")
        async with http.post(f"{base}/v1/registries/", json={"url": MOCK.as_uri()}) as resp:
            assert resp.status == 200, await resp.text()
        first = _nats_child(proc.pid)
        os.kill(first, signal.SIGKILL)
        await _next_nats_child(proc, first)
        await wait_until(ready, deadline_s=30, what="premd ready again after the nats-server restart")

        # JetStream recovered from disk: the registry added before the kill is still configured and served.
        async with http.get(f"{base}/v1/registries/") as resp:
            assert resp.status == 200
            assert MOCK.as_uri() in [r["url"] for r in await resp.json()]
        async with http.get(f"{base}/v1/services/") as resp:
            assert resp.status == 200 and len(await resp.json()) > 0
        # Commands work again end to end (registry_sync answers, the gateway's view follows the catalog).
        async with http.delete(f"{base}/v1/registries/", params={"url": MOCK.as_uri()}) as resp:
            assert resp.status == 200, await resp.text()
    said = log.read_text()
    assert "embedded nats-server died (signal SIGKILL)" in said and "embedded nats-server restarted" in said


async def test_premd_exits_non_zero_when_nats_server_cannot_come_back(
    premd_serve: tuple[asyncio.subprocess.Process, dict[str, str], Path],
) -> None:
    """Killed again each time it restarts: after the restart budget premd stops and exits 1, naming the cause."""
    proc, env, log = premd_serve
    await _wait_health(int(env["PREMD_PORT"]), proc)
    pid = _nats_child(proc.pid)
    for _ in range(10):
        os.kill(pid, signal.SIGKILL)
        try:
            pid = await _next_nats_child(proc, pid)
        except StopWaiting:
            break
    async with asyncio.timeout(60):
        assert await proc.wait() == 1
    assert "premd: nats-server died 6 times within 60 s" in log.read_text()


async def test_routes_answer_503_at_once_while_the_bus_is_down(
    settings: Settings, nc: NATS, js: JetStreamContext, nats_server: EmbeddedNats
) -> None:
    """Not after the request timeout: the code says the bus is disconnected, not that a reply timed out."""
    client: TestClient[Any, Any] = TestClient(TestServer(create_app(settings, nc), host="127.0.0.1"))
    await client.start_server()
    try:
        await nats_server.kill()

        async def lost() -> bool:
            return not nc.is_connected

        await wait_until(lost, deadline_s=30, what="the gateway's connection lost")
        calls = [("GET", "/v1/registries/", None), ("POST", "/v1/registries/", {"url": MOCK.as_uri()})]
        for method, path, body in [*calls, ("GET", "/v1/events", None)]:
            async with client.request(method, path, json=body) as resp:
                body = await resp.json()
                assert resp.status == 503, (path, body)
                assert body["detail"]["code"] == "bus.disconnected", (path, body)
        async with client.get("/readyz") as resp:
            assert resp.status == 503 and (await resp.json())["bus"] == "disconnected"
    finally:
        await client.close()
