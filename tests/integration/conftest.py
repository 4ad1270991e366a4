"""Fixtures shared by the gateway edge tests: the reference service as a local process, and a gateway that sees it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from common.settings import Settings
from tests.integration.edge_support import Client, gateway, new_sid, put_service, ref_service, seen


@pytest.fixture
async def ref_port() -> AsyncIterator[int]:
    async with ref_service() as port:
        yield port


@pytest.fixture
async def edge(settings: Settings, nc: NATS, js: JetStreamContext, ref_port: int) -> AsyncIterator[tuple[Client, str]]:
    """The gateway plus one ready service (the reference service) it can reach."""
    sid = new_sid()
    async with gateway(settings) as client:
        await put_service(js, sid, host_port=ref_port)
        await seen(client, sid, "ready")
        yield client, sid
