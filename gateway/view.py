"""What the gateway knows, kept current by KV watches: the catalog, services' observed state, host facts.

Handlers read this in memory; they never ask Docker, and never ask NATS per listing.
"""

from __future__ import annotations

from nats.js import JetStreamContext

from common import subjects
from common.catalog import CatalogView
from common.jetstream import KVMirror, kv_bucket
from common.messages import HostFacts, ServiceState


class GatewayView:
    def __init__(self, js: JetStreamContext) -> None:
        self.js = js
        self.catalog = CatalogView(js)
        self._observed: KVMirror[ServiceState] | None = None
        self._host: KVMirror[HostFacts] | None = None

    async def start(self) -> None:
        await self.catalog.start()
        self._observed = KVMirror(await kv_bucket(self.js, subjects.KV_OBSERVED), ServiceState)
        self._host = KVMirror(await kv_bucket(self.js, subjects.KV_HOST), HostFacts)
        await self._observed.start()
        await self._host.start()

    async def stop(self) -> None:
        await self.catalog.stop()
        for mirror in (self._observed, self._host):
            if mirror is not None:
                await mirror.stop()

    @property
    def observed(self) -> KVMirror[ServiceState]:
        assert self._observed is not None
        return self._observed

    def state(self, service_id: str) -> ServiceState | None:
        return self.observed.values.get(service_id)

    @property
    def host(self) -> HostFacts | None:
        assert self._host is not None
        return self._host.values.get(subjects.HOST_FACTS_KEY)
