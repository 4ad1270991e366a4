"""Images that exist only in the test bed's OCI registry, so that a pull really downloads them."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiodocker

from tests.testbed.images import build_image
from tests.testbed.oci_registry import OciRegistry


async def remove_image(docker: aiodocker.Docker, ref: str) -> None:
    """Remove ``ref`` locally if it is there."""
    with contextlib.suppress(aiodocker.DockerError):
        await docker.images.delete(ref, force=True)


@asynccontextmanager
async def in_registry(
    docker: aiodocker.Docker, oci_registry: OciRegistry, image: str, prefix: str
) -> AsyncIterator[str]:
    """``image`` pushed under a unique name (``premd-test/<prefix>-<hex>``), absent locally; yields its reference."""
    remote = await oci_registry.push(docker, image, name=f"premd-test/{prefix}-{uuid.uuid4().hex[:8]}")
    await remove_image(docker, remote)
    try:
        yield remote
    finally:
        await remove_image(docker, remote)


@asynccontextmanager
async def with_own_layer(
    docker: aiodocker.Docker, oci_registry: OciRegistry, base: str, prefix: str, layer_bytes: int
) -> AsyncIterator[str]:
    """An image FROM ``base`` with a layer of its own (incompressible bytes), only in the registry: pulling it
    downloads ``layer_bytes``, so the pull reports progress."""
    local = f"premd-test/{prefix}-{uuid.uuid4().hex[:8]}:1"
    blob = os.urandom(layer_bytes)
    await build_image(docker, local, {"Dockerfile": f"FROM {base}\nCOPY blob /blob\n".encode(), "blob": blob})
    try:
        async with in_registry(docker, oci_registry, local, prefix) as remote:
            await remove_image(docker, local)
            yield remote
    finally:
        await remove_image(docker, local)
