"""A live, read-only view of the merged registry catalog (written by registry_sync, read by the others)."""

from __future__ import annotations

from nats.js import JetStreamContext

from common import subjects
from common.jetstream import KVMirror, kv_bucket
from common.messages import CatalogEntry, CatalogMeta


class CatalogView:
    """The catalog in registry order, from a KV watch: lookups are in memory."""

    def __init__(self, js: JetStreamContext) -> None:
        self._js = js
        self._meta: KVMirror[CatalogMeta] | None = None
        self._entries: KVMirror[CatalogEntry] | None = None

    async def start(self) -> None:
        kv = await kv_bucket(self._js, subjects.KV_CATALOG)
        self._meta = KVMirror(kv, CatalogMeta, lambda key: key == subjects.CATALOG_META_KEY)
        self._entries = KVMirror(kv, CatalogEntry, lambda key: key != subjects.CATALOG_META_KEY)
        await self._meta.start()
        await self._entries.start()

    async def stop(self) -> None:
        for mirror in (self._meta, self._entries):
            if mirror is not None:
                await mirror.stop()

    @property
    def meta(self) -> CatalogMeta | None:
        assert self._meta is not None
        return self._meta.values.get(subjects.CATALOG_META_KEY)

    @property
    def meta_mirror(self) -> KVMirror[CatalogMeta]:
        assert self._meta is not None
        return self._meta

    @property
    def entries_mirror(self) -> KVMirror[CatalogEntry]:
        assert self._entries is not None
        return self._entries

    def get(self, service_id: str) -> CatalogEntry | None:
        return self.entries_mirror.values.get(subjects.catalog_key(service_id))

    def entries(self) -> list[CatalogEntry]:
        """Services in registry order (entries written before the meta that lists them appear at once)."""
        meta = self.meta
        values = self.entries_mirror.values
        if meta is None:
            return list(values.values())
        found = (values.get(subjects.catalog_key(sid)) for sid in meta.order)
        return [entry for entry in found if entry is not None]
