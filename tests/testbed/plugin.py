"""pytest plugin: Docker test-bed fixtures. Enable with ``pytest_plugins = ["tests.testbed.plugin"]``.

Fixtures:
    docker          (function) aiodocker.Docker, closed after the test
    base_image      (session)  "premd-test/base:bookworm", built with debootstrap when missing
    ref_image       (session)  "premd-test/ref-service:1", rebuilt when missing or server.py changed
    oci_registry    (session)  OciRegistry on 127.0.0.1:<port>; ``await oci_registry.push(docker, tag)``
    make_container  (function) ContainerFactory; every container it made is force-deleted after the test

Tests marked ``@pytest.mark.docker`` (and every fixture above) skip when no engine answers, but FAIL
when ``CI=true`` or ``PREMD_REQUIRE_DOCKER=1``.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Iterator

import aiodocker
import pytest
import pytest_asyncio

from .base_image import BASE_IMAGE, ensure_base_image, file_lock
from .containers import ContainerFactory, RunningContainer
from .docker_engine import docker_required, docker_unreachable_reason, unavailable_message
from .images import REF_IMAGE, ensure_ref_image
from .oci_registry import REGISTRY_BINARY, OciRegistry, push_image, start_registry
from .util import free_port, run_isolated, wait_http_ok, wait_until

__all__ = [
    "BASE_IMAGE",
    "REF_IMAGE",
    "ContainerFactory",
    "OciRegistry",
    "RunningContainer",
    "free_port",
    "push_image",
    "require_docker",
    "wait_http_ok",
    "wait_until",
]


def _unavailable(message: str) -> None:
    if docker_required():
        pytest.fail(f"{message} (required because CI/PREMD_REQUIRE_DOCKER is set)", pytrace=False)
    pytest.skip(message)


def require_docker() -> None:
    """Skip the current test when no Docker engine answers; fail instead under CI / PREMD_REQUIRE_DOCKER."""
    reason = docker_unreachable_reason()
    if reason is not None:
        _unavailable(unavailable_message(reason))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "docker: needs a real Docker engine (fails, never skips, in CI)")


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("docker") is not None:
        require_docker()


@pytest_asyncio.fixture
async def docker() -> AsyncIterator[aiodocker.Docker]:
    require_docker()
    client = aiodocker.Docker()
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture(scope="session")
def base_image() -> str:
    require_docker()
    return ensure_base_image(BASE_IMAGE)


@pytest.fixture(scope="session")
def ref_image(base_image: str) -> str:
    async def build() -> str:
        async with aiodocker.Docker() as client:
            return await ensure_ref_image(client, REF_IMAGE, base_image)

    with file_lock("premd-test-ref-image"):
        return run_isolated(build)


@pytest.fixture(scope="session")
def oci_registry() -> Iterator[OciRegistry]:
    if shutil.which(REGISTRY_BINARY) is None:
        _unavailable(f"{REGISTRY_BINARY} missing; run scripts/install-system-deps.sh")
    registry = start_registry()
    try:
        yield registry
    finally:
        registry.close()


@pytest_asyncio.fixture
async def make_container(docker: aiodocker.Docker) -> AsyncIterator[ContainerFactory]:
    factory = ContainerFactory(docker)
    try:
        yield factory
    finally:
        await factory.cleanup()
