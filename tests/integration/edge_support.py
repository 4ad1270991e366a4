"""Helpers for the gateway edge tests: the reference service as a loopback subprocess, services in KV."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import msgspec
from aiohttp import web
from aiohttp.test_utils import TestServer
from nats.js import JetStreamContext
from yarl import URL

from common import subjects
from common.jetstream import kv_bucket
from common.manifest import Manifest
from common.messages import CatalogEntry, ServicePhase, ServiceState
from common.settings import Settings
from gateway.forwarding import Front
from gateway.keys import VIEW
from tests.support import components
from tests.support.components import Client as Client  # re-exported: the edge tests import it from here
from tests.testbed.util import free_port, wait_http_ok

REF_SERVER = Path(__file__).resolve().parents[1] / "testbed" / "refservice" / "server.py"
DEADLINE_S = 10.0


@asynccontextmanager
async def ref_service(env: Mapping[str, str] | None = None) -> AsyncIterator[int]:
    """The reference Prem service on a free 127.0.0.1 port, as a subprocess; yields the port."""
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-u",
        str(REF_SERVER),
        env={**os.environ, "REF_HOST": "127.0.0.1", "REF_PORT": str(port), **(env or {})},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        await wait_http_ok(f"http://127.0.0.1:{port}/v1/", deadline_s=DEADLINE_S, interval=0.02)
        yield port
    finally:
        proc.terminate()
        await proc.wait()


class FrontTestServer(TestServer):
    """The app behind the gateway's own listener (gateway.forwarding.Front), as ``premd serve`` runs it."""

    _front: Front | None = None

    async def start_server(self, loop: asyncio.AbstractEventLoop | None = None, **kwargs: Any) -> None:
        if self.runner:
            return
        self.runner = await self._make_runner(handler_cancellation=True, **kwargs)
        await self.runner.setup()
        assert isinstance(self.runner, web.AppRunner)
        self._front = Front(self.runner, self.app)
        self.port = await self._front.start(self.host, 0)
        self.scheme = "http"
        self._root = URL(f"http://{self.host}:{self.port}")

    async def close(self) -> None:
        if self._front is not None:
            await self._front.stop(0)
        server = self.runner.server if self.runner is not None else None
        for handler in list(server.connections if server is not None else []):
            handler.force_close()  # connections the front handed to aiohttp end with the test, not at its 60 s bound
        await super().close()


def gateway(settings: Settings) -> AbstractAsyncContextManager[Client]:
    """The full gateway app (premd's routes and the edge) behind its own listener, as the gateway bus user."""
    return components.gateway(settings, FrontTestServer)


async def put_service(
    js: JetStreamContext,
    service_id: str,
    *,
    phase: ServicePhase | None = "ready",
    host_port: int | None = None,
    last_error: str | None = None,
    operation_id: str | None = None,
) -> None:
    """A catalog entry for ``service_id`` and, unless ``phase`` is None, its observed state."""
    manifest = Manifest(id=service_id, name=service_id, interfaces=["chat", "embeddings"])
    catalog = await kv_bucket(js, subjects.KV_CATALOG)
    await catalog.put(
        subjects.catalog_key(service_id), msgspec.json.encode(CatalogEntry(manifest=manifest, origin="test"))
    )
    if phase is None:
        return
    state = ServiceState(
        service_id=service_id,
        phase=phase,
        running=phase == "ready",
        ready=phase == "ready",
        host_port=host_port,
        last_error=last_error,
        operation_id=operation_id,
    )
    observed = await kv_bucket(js, subjects.KV_OBSERVED)
    await observed.put(service_id, msgspec.json.encode(state))


async def seen(client: Client, service_id: str, phase: ServicePhase | None = None) -> None:
    """Wait until the gateway's view shows the service (in ``phase`` when given)."""
    view = client.app[VIEW]

    def ok(values: dict[str, ServiceState]) -> bool:
        state = values.get(service_id)
        return state is not None and (phase is None or state.phase == phase)

    await view.observed.wait_for(ok, timeout=DEADLINE_S)
    if view.catalog.get(service_id) is None:
        await view.catalog.entries_mirror.wait_for(lambda v: subjects.catalog_key(service_id) in v, DEADLINE_S)


def new_sid() -> str:
    return f"svc-{uuid.uuid4().hex[:8]}"
