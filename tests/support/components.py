"""premd's components in a test's process, each on its own connection as its own bus user."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TypeVar

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from common import subjects
from common.component import Component
from common.settings import Settings
from gateway.app import create_app
from gateway.loading import LOADING
from tests.support.bus_users import connect_as

C = TypeVar("C", bound=Component)

Client = TestClient[web.Request, web.Application]


@asynccontextmanager
async def running(cls: type[C], settings: Settings) -> AsyncIterator[C]:
    """One component started on its own connection; stopped, and the connection closed, after."""
    nc = await connect_as(settings, cls.name)
    component = cls(settings, nc)
    await component.start()
    try:
        yield component
    finally:
        await component.stop()
        await nc.close()


@asynccontextmanager
async def gateway(settings: Settings, server: type[TestServer] = TestServer) -> AsyncIterator[Client]:
    """The full gateway app on a loopback test server (``server``: which listener serves it)."""
    nc = await connect_as(settings, subjects.GATEWAY)
    client: Client = TestClient(server(create_app(settings, nc), host="127.0.0.1"))
    try:
        await client.start_server()
        # Requests wait for the view by themselves (gateway/loading.py); tests also read it directly.
        await client.app[LOADING]
        yield client
    finally:
        await client.close()
        await nc.close()
