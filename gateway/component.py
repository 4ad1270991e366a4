"""The gateway process: the HTTP server plus its micro service registration."""

from __future__ import annotations

from aiohttp import web
from nats.micro.service import Service

from common import bus, subjects
from common.component import Component
from common.version import VERSION
from gateway.app import create_app


class Gateway(Component):
    name = subjects.GATEWAY

    _runner: web.AppRunner | None = None
    _service: Service | None = None

    async def start(self) -> None:
        # No commands: registered so that $SRV.PING / $SRV.INFO / $SRV.STATS find the gateway like the others.
        self._service = await bus.serve(self.nc, self.name, VERSION, "premd HTTP gateway", [])
        self._runner = web.AppRunner(
            create_app(self.settings, self.nc), shutdown_timeout=self.settings.shutdown_timeout_s
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.settings.host, self.settings.port)
        await site.start()

    @property
    def bound_port(self) -> int:
        assert self._runner is not None
        for addr in self._runner.addresses:
            return int(addr[1])
        raise RuntimeError("gateway not listening")

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._service is not None:
            await self._service.stop()
