"""``premd serve`` when the Docker engine is missing or hung (issue 9, defects 1 and 4).

- No engine installed (no socket, DOCKER_HOST unset; a mount namespace hides the host's /run): premd
  starts, lists services, answers Docker routes 503 ``docker.unavailable`` naming the socket it tried, and
  uses the engine once one listens there (a proxy to the real engine, started later, appears at the path).
- A hung engine (a socket that accepts and never answers): premd opens HTTP, a Docker route fails within
  the call deadline, and SIGTERM ends premd, also while start-up waits on the engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.testbed.util import StopWaiting, free_port, wait_until

pytestmark = pytest.mark.docker

PREMD = str(Path(sys.executable).parent / "premd")
ENGINE = "/var/run/docker.sock"
SERVICE = {
    "id": "engine-fault-svc",
    "name": "Engine fault service",
    "interfaces": ["chat"],
    "dockerImages": {"cpu": {"image": "premd-test/none:1", "size": 1000}},
    "defaultPort": 8000,
    "defaultExternalPort": 18000,
}


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREMD_", "PREM_", "DOCKER_"))}
    registry = tmp_path / "registry.json"
    registry.write_text(json.dumps([SERVICE]))
    (tmp_path / "home").mkdir(exist_ok=True)
    env.update(
        HOME=str(tmp_path / "home"),
        PREMD_DATA_DIR=str(tmp_path / "data"),
        PREMD_PORT=str(free_port()),
        PREMD_NATS_PORT=str(free_port()),
        PREM_REGISTRY_URL=registry.as_uri(),
        PREMD_HOST_FACTS_INTERVAL_S="0.5",
    )
    env.update(extra)
    return env


@contextlib.asynccontextmanager
async def premd(tmp_path: Path, env: dict[str, str], *prefix: str) -> AsyncIterator[asyncio.subprocess.Process]:
    log = (tmp_path / "premd.log").open("ab")
    proc = await asyncio.create_subprocess_exec(*prefix, PREMD, "serve", env=env, stdout=log, stderr=log)
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        log.close()


def _log(tmp_path: Path) -> str:
    return (tmp_path / "premd.log").read_text(errors="replace")[-3000:]


async def _get(port: int, path: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}{path}") as resp:
        return resp.status, await resp.json(content_type=None)


async def _wait_http(tmp_path: Path, proc: asyncio.subprocess.Process, port: int, deadline_s: float = 60) -> None:
    async def up() -> bool:
        if proc.returncode is not None:
            raise StopWaiting(f"premd exited with {proc.returncode}: {_log(tmp_path)}")
        # /readyz, not GET /v1/: the gateway answers that before the other components' processes are up
        status, _ = await _get(port, "/readyz")
        return status == 200

    await wait_until(up, deadline_s=deadline_s, interval=0.1, what="premd's HTTP and every component")


@contextlib.asynccontextmanager
async def unix_proxy(path: Path, target: str = ENGINE) -> AsyncIterator[None]:
    """A socket at ``path`` that forwards every connection to the engine at ``target``."""

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_unix_connection(target)
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    server = await asyncio.start_unix_server(forward, path=str(path))
    try:
        yield
    finally:
        server.close()


@contextlib.asynccontextmanager
async def hung_engine(path: Path) -> AsyncIterator[list[asyncio.StreamWriter]]:
    """A socket that accepts connections and never answers: a wedged dockerd. Yields the connections seen."""
    held: list[asyncio.StreamWriter] = []

    async def hold(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_unix_server(hold, path=str(path))
    try:
        yield held
    finally:
        for writer in held:
            writer.close()
        server.close()


async def test_no_engine_installed_then_one_appears(tmp_path: Path) -> None:
    run = tmp_path / "run"  # this premd's /run (and so /var/run): no docker.sock in it
    run.mkdir()
    env = _env(tmp_path)
    port = int(env["PREMD_PORT"])
    hide_run = ["unshare", "--mount", "sh", "-c", f'mount --bind "{run}" /run && exec "$0" "$@"']
    async with premd(tmp_path, env, *hide_run) as proc:
        await _wait_http(tmp_path, proc, port)

        async def listed() -> bool:
            status, body = await _get(port, "/v1/services/")
            return status == 200 and [s["id"] for s in body] == [SERVICE["id"]]

        await wait_until(listed, what="the service listed")
        status, body = await _get(port, "/v1/stats/")
        assert status == 503, body
        assert body["detail"]["code"] == "docker.unavailable" and ENGINE in body["detail"]["message"], body

        async def docker_is(state: str) -> bool:
            _, ready = await _get(port, "/readyz")
            return bool(ready["docker"] == state)

        await wait_until(lambda: docker_is("unavailable"), what="/readyz: docker unavailable")
        async with unix_proxy(run / "docker.sock"):  # the engine appears at /var/run/docker.sock
            await wait_until(lambda: docker_is("available"), what="/readyz: docker available")
            status, body = await _get(port, "/v1/stats/")
            assert status == 200 and isinstance(body, list), body
            proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(30):
                assert await proc.wait() == 0, _log(tmp_path)


async def test_hung_engine_premd_serves_and_stops(tmp_path: Path) -> None:
    sock = tmp_path / "hung.sock"
    env = _env(tmp_path, DOCKER_HOST=f"unix://{sock}", PREMD_DOCKER_TIMEOUT_S="1")
    port = int(env["PREMD_PORT"])
    async with hung_engine(sock), premd(tmp_path, env) as proc:
        await _wait_http(tmp_path, proc, port)
        status, body = await _get(port, "/v1/stats/")
        assert status == 503 and body["detail"]["code"] == "docker.unavailable", body
        assert str(sock) in body["detail"]["message"], body
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            assert await proc.wait() == 0, _log(tmp_path)


async def test_sigterm_while_start_up_waits_on_a_hung_engine(tmp_path: Path) -> None:
    sock = tmp_path / "hung.sock"
    env = _env(tmp_path, DOCKER_HOST=f"unix://{sock}", PREMD_DOCKER_TIMEOUT_S="600")
    async with hung_engine(sock) as held, premd(tmp_path, env) as proc:

        async def asked_docker() -> bool:
            if proc.returncode is not None:
                raise StopWaiting(f"premd exited with {proc.returncode}: {_log(tmp_path)}")
            return bool(held)

        await wait_until(asked_docker, what="the scheduler's set-up asking the engine")
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            code = await proc.wait()
        assert code == 0, _log(tmp_path)
