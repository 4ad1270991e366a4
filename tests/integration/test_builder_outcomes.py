"""What a package's build can end with, on the real engine: a run() that raises fails at the test stage (its
traceback in the log, nothing pushed), a setup() that hangs fails at the setup timeout, their test containers are
gone; a ready package is a catalog service that POST /v1/run-service/ starts and the proxy reaches; deleting it
removes it from the catalog."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiodocker
import aiohttp
import pytest

from common.settings import Settings
from registry_sync.component import RegistrySync
from scheduler.component import Scheduler
from tests.support.builder_bed import (
    Client,
    builder,
    builder_settings,
    gateway,
    package_api,
    remove_package_images,
    unique,
    upload,
    wait_ended,
    zip_bytes,
)
from tests.support.components import running
from tests.support.packages import hanging_setup_files, hello_files, raising_files
from tests.testbed.oci_registry import OciRegistry
from tests.testbed.util import wait_until

pytestmark = pytest.mark.docker


@pytest.fixture
def bsettings(settings: Settings, base_image: str, oci_registry: OciRegistry) -> Settings:
    return builder_settings(settings, base_image, oci_registry.host, builder_setup_timeout_s=5.0)


@pytest.fixture
async def api(bsettings: Settings, docker: aiodocker.Docker) -> AsyncIterator[tuple[Client, list[str]]]:
    async with package_api(bsettings, docker) as api:
        yield api


async def _events(client: Client, package_id: str) -> list[dict[str, Any]]:
    resp = await client.get(f"/v1/packages/{package_id}/logs")
    return [json.loads(line) for line in (await resp.text()).splitlines()]


async def _not_in_registry(registry: OciRegistry, name: str) -> bool:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{registry.url}/v2/{name}/tags/list") as resp:
            return resp.status == 404 or not (await resp.json()).get("tags")


async def test_run_that_raises_fails_at_test_with_traceback_and_nothing_pushed(
    api: tuple[Client, list[str]], tmp_path: Path, oci_registry: OciRegistry, docker: aiodocker.Docker
) -> None:
    client, made = api
    resp = await upload(client, zip_bytes(tmp_path, unique(raising_files())))
    package_id = (await resp.json())["ID"]
    made.append(package_id)
    done = await wait_ended(client, package_id)
    assert (done["Status"], done["Stage"], done["ErrorCode"]) == ("failed", "testing", "build.test_failed"), done
    assert "run failed on purpose" in done["Error"]
    assert done["Artifacts"] == []
    lines = [e.get("line") or "" for e in await _events(client, package_id)]
    assert any("Traceback" in line for line in lines)
    assert any("ValueError: run failed on purpose" in line for line in lines)
    assert await _not_in_registry(oci_registry, "premd-test/raising")
    assert await docker.containers.list(all=True, filters={"label": [f"org.premd.builder.test={package_id}"]}) == []


async def test_setup_that_hangs_fails_at_the_setup_timeout(
    api: tuple[Client, list[str]], tmp_path: Path, oci_registry: OciRegistry, docker: aiodocker.Docker
) -> None:
    client, made = api
    resp = await upload(client, zip_bytes(tmp_path, unique(hanging_setup_files())))
    package_id = (await resp.json())["ID"]
    made.append(package_id)
    done = await wait_ended(client, package_id)
    assert (done["Status"], done["Stage"], done["ErrorCode"]) == ("failed", "testing", "build.setup_timeout"), done
    assert "5 s" in done["Error"]
    assert await _not_in_registry(oci_registry, "premd-test/hanging")
    assert await docker.containers.list(all=True, filters={"label": [f"org.premd.builder.test={package_id}"]}) == []


async def test_ready_package_runs_as_a_service_through_the_proxy_and_deletion_removes_it(
    bsettings: Settings, tmp_path: Path, docker: aiodocker.Docker
) -> None:
    made: list[str] = []
    async with (
        running(RegistrySync, bsettings),
        running(Scheduler, bsettings),
        builder(bsettings),
        gateway(bsettings) as client,
    ):
        resp = await upload(client, zip_bytes(tmp_path, unique(hello_files())))
        package_id = (await resp.json())["ID"]
        made.append(package_id)
        assert (await wait_ended(client, package_id))["Status"] == "ready"
        sid = f"pkg-{package_id[:12]}"

        async def listed() -> bool:
            services = await (await client.get("/v1/services/")).json()
            return any(s["id"] == sid for s in services)

        await wait_until(listed, deadline_s=30, what="package in the catalog")
        service = await (await client.get(f"/v1/services/{sid}")).json()
        assert service["name"] == "premd-test/hello" and service["defaultPort"] == 5000
        try:
            run = await client.post("/v1/run-service/", json={"id": sid})
            assert run.status == 200, await run.text()
            body: dict[str, Any] = {}

            async def answered() -> bool:  # run-service answers once the container runs; readiness follows
                answer = await client.post(f"/proxy/{sid}/predictions", json={"input": {"text": "proxy"}})
                body.update(await answer.json())
                return answer.status != 503

            await wait_until(answered, deadline_s=60, what="the package's service ready")
            assert body["status"] == "succeeded" and body["output"] == "hello proxy", body
            stop = await client.get(f"/v1/stop-service/{sid}")
            assert stop.status == 200, await stop.text()
        finally:
            await client.get(f"/v1/stop-service/{sid}")
        assert (await client.delete(f"/v1/packages/{package_id}")).status == 200

        async def gone() -> bool:
            return (await client.get(f"/v1/services/{sid}")).status == 400

        await wait_until(gone, deadline_s=30, what="package out of the catalog")
    await remove_package_images(docker, made)
