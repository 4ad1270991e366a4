"""The registry_sync component: bus endpoints over the RegistrySyncer, and the periodic refresh task."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import ClassVar

from common import bus, subjects
from common.component import ServiceComponent
from common.jetstream import KVMirror, kv_bucket
from common.messages import (
    Ack,
    AddCustomService,
    AddRegistry,
    CatalogEntry,
    CatalogSnapshot,
    Empty,
    PackageRecord,
    RefreshRegistries,
    RefreshResult,
    RegistryList,
    RegistryStatus,
    RemoveCustomService,
    RemoveRegistry,
)
from common.settings import OFFICIAL_REGISTRY_URL
from registry_sync.fetch import Fetcher
from registry_sync.file_policy import FilePolicy
from registry_sync.packages import catalog_entries
from registry_sync.publish import CatalogPublisher
from registry_sync.state import ConfigStore
from registry_sync.sync import RegistrySyncer

logger = logging.getLogger(__name__)


class RegistrySync(ServiceComponent):
    name = subjects.REGISTRY_SYNC
    description = "premd registry_sync: fetches registries, publishes the merged catalog"

    bundled_url: ClassVar[str] = OFFICIAL_REGISTRY_URL
    """The registry the bundled snapshot stands in for until it is fetched (tests point it at a local server)."""
    syncer: RegistrySyncer
    _fetcher: Fetcher | None = None
    _refresher: asyncio.Task[None] | None = None
    _packages: KVMirror[PackageRecord] | None = None
    _package_task: asyncio.Task[None] | None = None

    async def setup(self) -> None:
        self._fetcher = Fetcher(
            self.settings.registry_fetch_timeout_s, self.settings.registry_max_bytes, FilePolicy.of(self.settings)
        )
        store = await ConfigStore.open(self.js)
        publisher = await CatalogPublisher.open(self.js)
        self.syncer = RegistrySyncer(self.settings, store, publisher, self._fetcher, self.bundled_url)
        # --- packages: ready model packages join the catalog (origin "packages") ---
        self._packages = KVMirror(await kv_bucket(self.js, subjects.KV_PACKAGES), PackageRecord)
        await self._packages.start()
        self.syncer.packages = catalog_entries(self._packages.values.values())
        self._packages_changed = asyncio.Event()
        self._packages.listeners.append(lambda _key, _value: self._packages_changed.set())
        await self.syncer.load()
        self._refresher = asyncio.create_task(self._refresh_forever(), name="registry_sync.refresh")
        self._package_task = asyncio.create_task(self._follow_packages(), name="registry_sync.packages")

    async def _follow_packages(self) -> None:
        assert self._packages is not None
        while True:
            await self._packages_changed.wait()
            self._packages_changed.clear()
            try:
                await self.syncer.set_packages(catalog_entries(self._packages.values.values()))
            except Exception:  # boundary: the next change tries again
                logger.exception("publishing the packages' catalog entries failed")

    async def teardown(self) -> None:
        if self._package_task is not None:
            self._package_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._package_task
        if self._packages is not None:
            await self._packages.stop()
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
        if self._fetcher is not None:
            await self._fetcher.close()

    async def _refresh_forever(self) -> None:
        while True:
            try:
                await self.syncer.refresh()
            except Exception:  # boundary: a failed round must not end the loop
                logger.exception("registry refresh failed")
            await asyncio.sleep(self.settings.registry_refresh_s)

    def endpoints(self) -> list[bus.Endpoint]:
        return [
            bus.endpoint("registry_list", subjects.REGISTRY_LIST, Empty, self._list),
            bus.endpoint("registry_add", subjects.REGISTRY_ADD, AddRegistry, self._add),
            bus.endpoint("registry_remove", subjects.REGISTRY_REMOVE, RemoveRegistry, self._remove),
            bus.endpoint("registry_refresh", subjects.REGISTRY_REFRESH, RefreshRegistries, self._refresh),
            bus.endpoint("registry_snapshot", subjects.REGISTRY_SNAPSHOT, Empty, self._snapshot),
            bus.endpoint("custom_add", subjects.CUSTOM_SERVICE_ADD, AddCustomService, self._add_custom),
            bus.endpoint("custom_remove", subjects.CUSTOM_SERVICE_REMOVE, RemoveCustomService, self._remove_custom),
        ]

    async def _list(self, _: Empty) -> RegistryList:
        return RegistryList(registries=await self.syncer.list())

    async def _add(self, cmd: AddRegistry) -> RegistryStatus:
        return await self.syncer.add_registry(cmd.url.strip())

    async def _remove(self, cmd: RemoveRegistry) -> Ack:
        await self.syncer.remove_registry(cmd.url.strip())
        return Ack(message=f"registry {cmd.url.strip()} removed")

    async def _refresh(self, cmd: RefreshRegistries) -> RefreshResult:
        return await self.syncer.refresh(cmd.url.strip() if cmd.url else None)

    async def _snapshot(self, _: Empty) -> CatalogSnapshot:
        return await self.syncer.snapshot()

    async def _add_custom(self, cmd: AddCustomService) -> CatalogEntry:
        return await self.syncer.add_custom(cmd.manifest)

    async def _remove_custom(self, cmd: RemoveCustomService) -> Ack:
        await self.syncer.remove_custom(cmd.id)
        return Ack(message=f"service {cmd.id} removed")
