"""What the gateway knows, kept current by KV watches: the catalog, services' observed state, host facts.

Handlers read this in memory; they never ask Docker, and never ask NATS per listing.
"""

from __future__ import annotations

from nats.js import JetStreamContext

from common import subjects
from common.catalog import CatalogView
from common.jetstream import KVMirror, kv_bucket
from common.messages import DesiredState, HostFacts, ServiceState


class GatewayView:
    def __init__(self, js: JetStreamContext) -> None:
        self.js = js
        self.catalog = CatalogView(js)
        self._observed: KVMirror[ServiceState] | None = None
        self._host: KVMirror[HostFacts] | None = None
        self._desired: KVMirror[DesiredState] | None = None

    async def start(self) -> None:
        await self.catalog.start()
        self._observed = KVMirror(await kv_bucket(self.js, subjects.KV_OBSERVED), ServiceState)
        self._host = KVMirror(await kv_bucket(self.js, subjects.KV_HOST), HostFacts)
        await self._observed.start()
        await self._host.start()
        # What each service was asked to do and by whom (the idle stop needs "started on demand").
        desired_kv = await kv_bucket(self.js, subjects.KV_DESIRED)
        self._desired = KVMirror(desired_kv, DesiredState, decode_key=lambda key: not key.startswith("_"))
        await self._desired.start()

    async def stop(self) -> None:
        await self.catalog.stop()
        for mirror in (self._observed, self._host, self._desired):
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

    @property
    def desired(self) -> KVMirror[DesiredState]:
        assert self._desired is not None
        return self._desired
