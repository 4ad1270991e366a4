"""The builder's test bed: settings pointing at the test bed's base image and OCI registry, the builder and the
gateway in-process, upload helpers, and removal of what the builds left in Docker."""

from __future__ import annotations

import io
import uuid
import zipfile
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import aiodocker
import aiohttp
import msgspec

from builder.component import Builder
from builder.docker_driver import LABEL_PACKAGE
from common.settings import Settings
from tests.support.components import Client, gateway, running
from tests.support.packages import FileContent, write_package_zip
from tests.testbed.util import wait_until

# Re-exported: the builder tests' (and bench/builds.py's) client and gateway.
__all__ = ["Client", "gateway"]


def builder_settings(settings: Settings, base_image: str, registry_host: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "builder_base_images": (f"3.11={base_image}",),
        "builder_push_registry": registry_host,
        "builder_job_ack_wait_s": 3.0,
        "builder_setup_timeout_s": 30.0,
        "builder_run_timeout_s": 30.0,
        "builder_test_memory_bytes": 256 * 1024 * 1024,
        "package_upload_timeout_s": 60.0,
        **overrides,
    }
    return msgspec.structs.replace(settings, **values)


def unique(files: Mapping[str, FileContent]) -> dict[str, FileContent]:
    """The package with one more file, so that its ID is this test's own."""
    return {**files, "nonce.txt": uuid.uuid4().hex}


def zip_bytes(tmp: Path, files: Mapping[str, FileContent], **kwargs: Any) -> bytes:
    path = write_package_zip(tmp / f"{uuid.uuid4().hex}.zip", files, **kwargs)
    return path.read_bytes()


def rezip(data: bytes) -> bytes:
    """The same files in another zip: reverse order, stored (not deflated), another timestamp."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for info in reversed(src.infolist()):
            copy = zipfile.ZipInfo(info.filename, date_time=(2024, 1, 2, 3, 4, 6))
            copy.external_attr = info.external_attr
            copy.create_system = info.create_system
            dst.writestr(copy, src.read(info.filename))
    return out.getvalue()


async def upload(client: Client, data: bytes, filename: str = "package.zip") -> aiohttp.ClientResponse:
    form = aiohttp.FormData()
    form.add_field("file", data, filename=filename, content_type="application/zip")
    return await client.post("/v1/packages/upload", data=form)


async def wait_ended(client: Client, package_id: str, deadline_s: float = 600.0) -> dict[str, Any]:
    found: dict[str, Any] = {}

    async def ended() -> bool:
        resp = await client.get(f"/v1/packages/{package_id}")
        found.update(await resp.json())
        return found.get("Status") in ("ready", "failed")

    await wait_until(ended, deadline_s=deadline_s, interval=0.2, what=f"package {package_id} built")
    return found


def builder(settings: Settings) -> AbstractAsyncContextManager[Builder]:
    return running(Builder, settings)


@asynccontextmanager
async def package_api(settings: Settings, docker: aiodocker.Docker) -> AsyncIterator[tuple[Client, list[str]]]:
    """The builder and the gateway: the client, and a list for the test's package ids (their images go after)."""
    made: list[str] = []
    try:
        async with builder(settings), gateway(settings) as client:
            yield client, made
    finally:
        await remove_package_images(docker, made)


async def remove_package_images(docker: aiodocker.Docker, package_ids: list[str]) -> None:
    """Remove the images (every tag) the builds of these packages made."""
    for image in await docker.images.list(filters={"label": [LABEL_PACKAGE]}):
        labels = image.get("Labels") or {}
        if labels.get(LABEL_PACKAGE) in package_ids:
            try:
                await docker.images.delete(image["Id"], force=True)
            except aiodocker.DockerError:
                pass
