"""deploy/compose.yaml brought up on the real engine with docker-compose, smoke-tested, torn down.

The images are built here as a user builds them (scripts/deploy_build.py prepares a copy of deploy/, then
`docker-compose build`), FROM the test bed's base image. The stack gets free ports, a registry file naming the
reference chat service (pushed to the test bed's OCI registry), and is driven through the gateway: listing,
download, start, a streamed chat through /proxy, stop; the gateway's bus user is refused a publish outside its
permissions; a restarted scheduler container finds the running service where it left it; `down -v` leaves
no container, network or volume.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiodocker
import aiohttp
import pytest

from common.nats_auth import read_credentials
from scripts.deploy_build import DEPLOY, prepare
from tests.support.bus_users import RawClient
from tests.support.images import in_registry
from tests.support.registry_files import chat_manifest
from tests.support.scheduler_bed import cleanup_service
from tests.testbed.oci_registry import OciRegistry
from tests.testbed.sse import iter_sse
from tests.testbed.util import StopWaiting, free_port, wait_until

pytestmark = pytest.mark.docker

COMPOSE = shutil.which("docker-compose") or "docker-compose"
COMPOSE_TIMEOUT_S = 600.0
PROJECT_LABEL = "com.docker.compose.project"


@dataclass
class Stack:
    project: str
    workdir: Path
    env: dict[str, str]
    base: str
    nats_port: int

    def compose(self, *args: str, timeout: float = COMPOSE_TIMEOUT_S) -> str:
        files = ["-f", str(self.workdir / "compose.yaml"), "-f", str(self.workdir / "compose.test.yaml")]
        cmd = [COMPOSE, "--ansi", "never", "-p", self.project, *files, *args]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=self.env, check=False)
        assert proc.returncode == 0, f"{' '.join(cmd)}: {proc.stderr[-3000:]}"
        return proc.stdout

    def logs(self) -> str:
        try:
            return self.compose("logs", "--no-color", "--tail=40", timeout=60)[-6000:]
        except AssertionError as exc:
            return str(exc)


async def project_objects(docker: aiodocker.Docker, project: str) -> dict[str, list[str]]:
    label = {"label": [f"{PROJECT_LABEL}={project}"]}
    containers = await docker.containers.list(all=True, filters=json.dumps(label))
    networks = await docker.networks.list(filters=label)
    volumes = (await docker.volumes.list(filters=label)).get("Volumes") or []  # type: ignore[no-untyped-call]
    return {
        "containers": [c.id for c in containers],
        "networks": [n["Name"] for n in networks],
        "volumes": [v["Name"] for v in volumes],
    }


async def health(docker: aiodocker.Docker, project: str, service: str) -> str:
    filters = {"label": [f"{PROJECT_LABEL}={project}", f"com.docker.compose.service={service}"]}
    found = await docker.containers.list(all=True, filters=json.dumps(filters))
    if not found:
        return "missing"
    info: dict[str, Any] = await found[0].show()
    state = info["State"]
    status = str((state.get("Health") or {}).get("Status") or state["Status"])
    if status == "unhealthy":  # what the failing checks printed
        return f"unhealthy {[h.get('Output') for h in state['Health'].get('Log', [])][-2:]}"
    return status


@pytest.fixture
def compose_stack(tmp_path: Path, base_image: str, ref_image: str) -> Iterator[Stack]:
    suffix = uuid.uuid4().hex[:8]
    workdir = tmp_path / "deploy"
    shutil.copytree(DEPLOY, workdir, ignore=shutil.ignore_patterns("wheels", "nats-server", ".env"))
    prepare(workdir)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREMD_", "PREM_", "DEPLOY_", "COMPOSE_"))}
    port, nats_port = free_port(), free_port()
    settings = {
        "DEPLOY_PREMD_IMAGE": f"premd-test/compose-premd:{suffix}",
        "DEPLOY_NATS_IMAGE": f"premd-test/compose-nats:{suffix}",
        "DEPLOY_BASE_IMAGE": base_image,
        "PREMD_PORT": str(port),
        "PREMD_NATS_PORT": str(nats_port),
        "PREM_REGISTRY_URL": "file:///etc/premd/registry/registry.json",
        "PREMD_LOG_LEVEL": "INFO",
    }
    # The file users write from premd.env.example: compose reads it for the variables, the services for settings.
    (workdir / ".env").write_text("".join(f"{k}={v}\n" for k, v in settings.items()))
    (tmp_path / "registry").mkdir()
    (workdir / "compose.test.yaml").write_text(
        f"services:\n  registry_sync:\n    volumes: ['{tmp_path / 'registry'}:/etc/premd/registry:ro']\n"
    )
    stack = Stack(f"premd-test-compose-{suffix}", workdir, env, f"http://127.0.0.1:{port}", nats_port)
    try:
        yield stack
    finally:
        try:
            stack.compose("down", "-v", "--remove-orphans", timeout=180)
        finally:
            subprocess.run(
                ["docker", "rmi", "-f", settings["DEPLOY_PREMD_IMAGE"], settings["DEPLOY_NATS_IMAGE"]],
                capture_output=True,
                check=False,
            )


@pytest.fixture
async def pushed_chat(docker: aiodocker.Docker, ref_image: str, oci_registry: OciRegistry) -> AsyncIterator[str]:
    async with in_registry(docker, oci_registry, ref_image, "compose") as remote:
        yield remote


async def stream_chat(http: aiohttp.ClientSession, base_url: str, service_id: str) -> list[str]:
    chat = {"model": service_id, "messages": [{"role": "user", "content": "hello"}], "stream": True}
    data: list[str] = []

    async def answered() -> bool:  # running != ready: the proxy answers 503 until the service's check passes
        async with http.post(f"{base_url}/v1/chat/completions", json=chat) as resp:
            if resp.status == 503:
                return False
            assert resp.status == 200, await resp.text()
            data.extend([e.data async for e in iter_sse(resp)])
            return True

    await wait_until(answered, deadline_s=60, what="a streamed chat answer through the gateway's proxy")
    return data


# Two image builds and a stack start: about 2.5 min on an idle 2-core machine, much more on a busy one.
@pytest.mark.timeout(900)
async def test_compose_stack(compose_stack: Stack, pushed_chat: str, docker: aiodocker.Docker) -> None:
    stack = compose_stack
    service_id = f"compose-chat-{uuid.uuid4().hex[:8]}"
    registry = stack.workdir.parent / "registry" / "registry.json"
    registry.write_text(json.dumps([chat_manifest(service_id, pushed_chat, "Compose Chat")]))
    try:
        await asyncio.to_thread(stack.compose, "build")
        await asyncio.to_thread(stack.compose, "up", "-d")

        async def healthy() -> bool:
            states = {s: await health(docker, stack.project, s) for s in ("scheduler", "builder", "registry_sync")}
            states["gateway"] = await health(docker, stack.project, "gateway")
            if any(s.startswith(("unhealthy", "exited")) for s in states.values()):
                raise StopWaiting(f"{states}\n{stack.logs()}")
            return set(states.values()) == {"healthy"}

        await wait_until(healthy, deadline_s=180, interval=1.0, what="every premd service healthy")
        assert await health(docker, stack.project, "credentials") == "exited"

        async with aiohttp.ClientSession() as http:
            service: dict[str, Any] = {}

            async def listed() -> bool:
                nonlocal service
                async with http.get(f"{stack.base}/v1/services/{service_id}") as resp:
                    service = await resp.json() if resp.status == 200 else {}
                    return resp.status == 200

            await wait_until(listed, deadline_s=60, what="the registry file's service listed")
            assert service["downloaded"] is False and service["running"] is False

            async with http.get(f"{stack.base}/v1/download-service-stream-sse/{service_id}") as resp:
                assert resp.status == 200
                statuses = [json.loads(e.data).get("status") async for e in iter_sse(resp)]
            assert statuses[-1] == "Download complete", statuses

            async with http.post(f"{stack.base}/v1/run-service/", json={"id": service_id}) as resp:
                assert resp.status == 200, await resp.text()
            async with http.get(f"{stack.base}/v1/services/{service_id}") as resp:
                service = await resp.json()
            assert service["running"] is True
            port = service["runningPort"]
            events = await stream_chat(http, service["baseUrl"], service_id)
            assert events[-1] == "[DONE]" and len(events) > 2

            # The scheduler's container restarted: the service is still running where it was (the state is
            # in NATS's volume, the container adopted), and answers through the proxy again.
            await asyncio.to_thread(stack.compose, "restart", "scheduler")
            await wait_until(healthy, deadline_s=120, interval=1.0, what="the stack healthy after the restart")
            async with http.get(f"{stack.base}/v1/services/{service_id}") as resp:
                service = await resp.json()
            assert service["running"] is True and service["runningPort"] == port
            assert (await stream_chat(http, service["baseUrl"], service_id))[-1] == "[DONE]"

            async with http.get(f"{stack.base}/v1/stop-service/{service_id}") as resp:
                assert resp.status == 200
            async with http.get(f"{stack.base}/v1/services/{service_id}") as resp:
                service = await resp.json()
            assert service["running"] is False and service["downloaded"] is True

        await assert_bus_authorized(stack)
    finally:
        await cleanup_service(docker, service_id)

    await asyncio.to_thread(stack.compose, "down", "-v", "--remove-orphans")
    assert await project_objects(docker, stack.project) == {"containers": [], "networks": [], "volumes": []}


async def assert_bus_authorized(stack: Stack) -> None:
    """NATS refuses anonymous clients, and the gateway's user a publish outside its permissions."""
    url = f"nats://127.0.0.1:{stack.nats_port}"
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.nats_port)
    try:  # spoken by hand: a client library's failed connect can leave its socket for the collector
        info = json.loads((await asyncio.wait_for(reader.readline(), 10)).removeprefix(b"INFO "))
        assert info["auth_required"] is True
        writer.write(b'CONNECT {"verbose":false,"pedantic":false}\r\nPING\r\n')
        await writer.drain()
        assert b"authorization violation" in (await asyncio.wait_for(reader.readline(), 10)).lower()
    finally:
        writer.close()
        await writer.wait_closed()

    raw = await asyncio.to_thread(stack.compose, "exec", "-T", "gateway", "cat", "/run/premd/credentials/gateway.json")
    path = stack.workdir / "gateway.json"
    path.write_text(raw)
    creds = read_credentials(path)
    client = await RawClient().connect(url, creds)
    try:
        # The scheduler alone writes desired state; the gateway only asks it to.
        await client.nc.publish(f"$KV.premd_desired.{uuid.uuid4().hex}", b"{}")
        assert await client.refused("$KV.premd_desired", deadline_s=10), client.errors
    finally:
        await client.nc.close()
