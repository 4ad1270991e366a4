"""Shared fixtures: a real nats-server per test (JetStream in tmp_path), and the Docker test bed plugin."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from common import bus, subjects
from common.embedded_nats import EmbeddedNats
from common.jetstream import ensure_resources
from common.nats_auth import credentials_dir, credentials_path, ensure_credentials, read_credentials, server_config
from common.settings import Settings
from tests.testbed.util import free_port

pytest_plugins = ["tests.testbed.plugin"]


@pytest.fixture
def bus_credentials(tmp_path: Path) -> Path:
    """Every bus user's credentials (the directory PREMD_NATS_CREDENTIALS names in ``settings``)."""
    directory = credentials_dir(tmp_path / "data")
    ensure_credentials(directory)
    return directory


@pytest.fixture
async def nats_server(tmp_path: Path, bus_credentials: Path) -> AsyncIterator[EmbeddedNats]:
    """A real nats-server on a free loopback port, JetStream under tmp_path, with premd's bus authorization."""
    config = server_config(ensure_credentials(bus_credentials))
    server = EmbeddedNats(tmp_path / "nats", port=0, config=config)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
def nats_url(nats_server: EmbeddedNats) -> str:
    return nats_server.url


@pytest.fixture
async def nc(nats_url: str, bus_credentials: Path) -> AsyncIterator[NATS]:
    """The test's own connection, as the unrestricted admin user (it plays every part the test needs)."""
    client = await bus.connect(nats_url, "test", read_credentials(credentials_path(bus_credentials, subjects.ADMIN)))
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
async def js(nc: NATS) -> JetStreamContext:
    ctx = nc.jetstream()
    await ensure_resources(ctx)
    return ctx


@pytest.fixture
def settings(tmp_path: Path, nats_url: str, bus_credentials: Path) -> Settings:
    """Settings for in-process components: the test's NATS, a free gateway port, short timeouts."""
    return Settings(
        nats_url=nats_url,
        nats_credentials=str(bus_credentials),
        port=free_port(),
        data_dir=str(tmp_path / "data"),
        registry_urls=(),
        request_timeout_s=5.0,
        shutdown_timeout_s=5.0,
    )


_skipped: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped:
        _skipped.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """With PREMD_NO_SKIPS=1 (the test command, CI) a skipped test fails the run: nothing is skipped by accident."""
    import os

    if os.environ.get("PREMD_NO_SKIPS") == "1" and _skipped and session.exitstatus == 0:
        print(f"\n{len(_skipped)} test(s) skipped while PREMD_NO_SKIPS=1: {', '.join(_skipped)}")
        session.exitstatus = 1
