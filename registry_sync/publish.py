"""Publishing the merged catalog to KV_CATALOG and announcing each change on CATALOG_CHANGED.

Order of writes (readers rely on it): added and changed entries, then the meta under compare-and-set on its
revision (generation = previous + 1), then deletion of removed entries, then the event.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import PubAck
from nats.js.kv import KV_DEL, KV_OP, KV_PURGE, KeyValue

from common import codec, subjects
from common.errors import Code, error_for
from common.jetstream import kv_bucket
from common.messages import CatalogChanged, CatalogMeta, RegistryStatus
from registry_sync.merge import Diff, diff, meta_changed

logger = logging.getLogger(__name__)

CAS_ATTEMPTS = 10
WRITE_TIMEOUT_S = 60.0
"""Deadline for writing one catalog's entries (thousands of KV writes)."""
_DELETE = {KV_OP: KV_DEL}


class CatalogPublisher:
    """The catalog as last published (decoded meta, encoded entries), and the only writer of KV_CATALOG."""

    def __init__(self, js: JetStreamContext, kv: KeyValue, write_timeout_s: float = WRITE_TIMEOUT_S) -> None:
        self._js = js
        self._kv = kv
        self._write_timeout_s = write_timeout_s
        self.meta: CatalogMeta | None = None
        self.meta_revision = 0
        self.entries: dict[str, bytes] = {}
        """Encoded CatalogEntry by service id, as stored in the bucket."""

    @classmethod
    async def open(cls, js: JetStreamContext) -> CatalogPublisher:
        publisher = cls(js, await kv_bucket(js, subjects.KV_CATALOG))
        await publisher.load()
        return publisher

    @property
    def generation(self) -> int:
        return self.meta.generation if self.meta is not None else 0

    async def load(self) -> None:
        """Read the bucket's current content (at start, and after losing a compare-and-set)."""
        meta: CatalogMeta | None = None
        meta_revision = 0
        entries: dict[str, bytes] = {}
        watcher = await self._kv.watchall()
        try:
            async for entry in watcher:
                if entry is None:
                    break
                deleted = entry.operation in (KV_DEL, KV_PURGE) or not entry.value
                if entry.key == subjects.CATALOG_META_KEY:
                    meta_revision = entry.revision or 0
                    meta = None if deleted else codec.decode(entry.value, CatalogMeta)
                elif (sid := subjects.service_id_from_catalog_key(entry.key)) is not None:
                    if deleted:
                        entries.pop(sid, None)
                    else:
                        entries[sid] = entry.value
                if entry.delta == 0:
                    break
        finally:
            await watcher.stop()  # type: ignore[no-untyped-call]
        self.meta, self.meta_revision, self.entries = meta, meta_revision, entries

    async def publish(self, new: dict[str, bytes], registries: list[RegistryStatus]) -> CatalogChanged | None:
        """Publish the catalog ``new`` (encoded CatalogEntry by service id, in catalog order) when anything changed.

        Returns the event sent, or None when nothing changed.
        """
        order = list(new)
        carried = Diff()
        for _ in range(CAS_ATTEMPTS):
            change = diff(self.entries, new)
            if change.empty and not meta_changed(self.meta, order, registries):
                return None
            await self._put_many((sid, new[sid]) for sid in [*change.added, *change.changed])
            meta = CatalogMeta(
                generation=self.generation + 1, order=order, registries=registries, updated_at=time.time()
            )
            try:
                revision = await self._write_meta(meta)
            except nats.js.errors.KeyWrongLastSequenceError:
                logger.info("catalog meta changed under us; retrying on the fresh value")
                carried = carried.then(change)
                await self.load()
                continue
            self.meta, self.meta_revision = meta, revision
            await self._delete_many(change.removed)
            self.entries = new
            total = carried.then(change)
            event = CatalogChanged(
                generation=meta.generation, added=total.added, removed=total.removed, changed=total.changed
            )
            await self._announce(event)
            return event
        raise error_for(Code.STATE_CONFLICT, "catalog: too many concurrent writers")

    async def _write_meta(self, meta: CatalogMeta) -> int:
        data = codec.encode(meta)
        if self.meta_revision == 0:
            return await self._kv.create(subjects.CATALOG_META_KEY, data)
        return await self._kv.update(subjects.CATALOG_META_KEY, data, last=self.meta_revision)

    async def _put_many(self, items: Iterable[tuple[str, bytes]]) -> None:
        await self._pipelined((subjects.catalog_key(sid), value, None) for sid, value in items)

    async def _delete_many(self, ids: Iterable[str]) -> None:
        await self._pipelined((subjects.catalog_key(sid), b"", _DELETE) for sid in ids)

    async def _pipelined(self, writes: Iterable[tuple[str, bytes, dict[str, str] | None]]) -> None:
        """KV writes without a round trip each (thousands per catalog): publish all, then await every ack."""
        acks: list[asyncio.Future[PubAck]] = []
        try:
            async with asyncio.timeout(self._write_timeout_s):
                for key, value, headers in writes:
                    subject = subjects.kv_subject(subjects.KV_CATALOG, key)
                    acks.append(await self._js.publish_async(subject, value, headers=headers))
                await asyncio.gather(*acks)
        finally:
            for ack in acks:
                ack.cancel()  # no-op when done; never leave one pending after a failure

    async def _announce(self, event: CatalogChanged) -> None:
        try:
            await self._js.publish(subjects.CATALOG_CHANGED, codec.encode(event))
        except (nats.errors.Error, nats.js.errors.Error) as exc:
            # The catalog in KV is the truth; subscribers that missed the event see the new generation there.
            logger.warning("catalog generation %d published, but its event was not: %s", event.generation, exc)
