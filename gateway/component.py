"""The gateway process: the HTTP server plus its micro service registration."""

from __future__ import annotations

import logging

from aiohttp import web
from nats.micro.service import Service

from common import bus, subjects
from common.component import Component
from common.version import VERSION
from gateway.app import create_app
from gateway.forwarding import Front
from gateway.loading import LOADING

logger = logging.getLogger(__name__)


class Gateway(Component):
    name = subjects.GATEWAY

    _runner: web.AppRunner | None = None
    _service: Service | None = None
    _front: Front | None = None

    async def start(self) -> None:
        # No commands: registered so that $SRV.PING / $SRV.INFO / $SRV.STATS find the gateway like the others.
        self._service = await bus.serve(self.nc, self.name, VERSION, "premd HTTP gateway", [])
        app = create_app(self.settings, self.nc)
        self._runner = web.AppRunner(app, shutdown_timeout=self.settings.shutdown_timeout_s)
        await self._runner.setup()
        # The listening socket is the byte-stream proxy's; it hands every other request to aiohttp.
        self._front = Front(self._runner, app)
        port = await self._front.start(self.settings.host, self.settings.port)
        logger.info("gateway listening on http://%s:%d", self.settings.host, port)  # PREMD_PORT=0 picks one
        # Health answers already; the view loads meanwhile (gateway/loading.py). Started means loaded: a view
        # that cannot load fails the start, as before the gateway listened early.
        await app[LOADING]

    async def stop(self) -> None:
        if self._front is not None:
            await self._front.stop(self.settings.shutdown_timeout_s)
        if self._runner is not None:
            await self._runner.cleanup()
        if self._service is not None:
            await self._service.stop()
