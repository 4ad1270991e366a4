"""A builder process killed (SIGKILL) in the middle of a build leaves its job in the work queue: started again,
it (or any builder) picks the job up after the ack wait and the package still ends ready, never stuck."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiodocker
import pytest

from common.settings import Settings
from tests.support.builder_bed import (
    Client,
    builder_settings,
    gateway,
    remove_package_images,
    unique,
    upload,
    wait_ended,
    zip_bytes,
)
from tests.support.packages import six_files
from tests.testbed.oci_registry import OciRegistry
from tests.testbed.util import StopWaiting, wait_until

pytestmark = pytest.mark.docker


async def _builder_process(settings: Settings) -> asyncio.subprocess.Process:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREMD_", "PREM_"))}
    env.update(
        PREMD_NATS_URL=settings.nats_url or "",
        PREMD_DATA_DIR=settings.data_dir,
        PREMD_BUILDER_BASE_IMAGES=",".join(settings.builder_base_images),
        PREMD_BUILDER_PUSH_REGISTRY=settings.builder_push_registry,
        PREMD_BUILDER_JOB_ACK_WAIT_S=str(settings.builder_job_ack_wait_s),
        PREMD_BUILDER_SETUP_TIMEOUT_S=str(settings.builder_setup_timeout_s),
    )
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "builder", env=env, stderr=asyncio.subprocess.DEVNULL
    )


@pytest.fixture
async def api(settings: Settings, base_image: str, oci_registry: OciRegistry) -> AsyncIterator[tuple[Client, Settings]]:
    bsettings = builder_settings(settings, base_image, oci_registry.host)
    async with gateway(bsettings) as client:
        yield client, bsettings


async def test_builder_killed_mid_build_and_restarted_still_ends_ready(
    api: tuple[Client, Settings], tmp_path: Path, docker: aiodocker.Docker
) -> None:
    client, settings = api
    first = await _builder_process(settings)
    second: asyncio.subprocess.Process | None = None
    package_id = ""
    try:

        async def answering() -> bool:
            if first.returncode is not None:
                raise StopWaiting("the builder exited")
            resp = await upload(client, zip_bytes(tmp_path, unique(six_files())))
            nonlocal package_id
            if resp.status in (200, 202):
                package_id = (await resp.json())["ID"]
                return True
            return False

        await wait_until(answering, deadline_s=60, what="the builder answering uploads")

        async def building() -> bool:
            body = await (await client.get(f"/v1/packages/{package_id}")).json()
            return bool(body["Status"] == "building")

        await wait_until(building, deadline_s=60, interval=0.05, what="the build started")
        first.send_signal(signal.SIGKILL)
        assert await first.wait() == -signal.SIGKILL
        stuck = await (await client.get(f"/v1/packages/{package_id}")).json()
        assert stuck["Status"] == "building"  # the dead builder's state, until the job is taken again

        second = await _builder_process(settings)
        done = await wait_ended(client, package_id, deadline_s=600)
        assert done["Status"] == "ready", done
        assert done["Attempt"] == 1
        assert done["Artifacts"][0]["Test"]["Status"] == "passed"
        logs = await (await client.get(f"/v1/packages/{package_id}/logs")).text()
        assert "this attempt was interrupted" in logs
    finally:
        for proc in (first, second):
            if proc is not None and proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
                async with asyncio.timeout(30):
                    await proc.wait()
        if package_id:
            await remove_package_images(docker, [package_id])
