"""The catalog's owner: configured registries, custom services, refreshes, and publishing their merge.

Fetches run outside the lock (a slow registry never holds up a command); applying outcomes, changing the
configuration and publishing run under it, one at a time.
"""

from __future__ import annotations

import asyncio
import logging
import time
import typing
from collections.abc import Awaitable, Sequence
from typing import Any

import msgspec

from common.errors import Code, error_for
from common.messages import CatalogChanged, CatalogEntry, CatalogSnapshot, RefreshResult, RegistryStatus
from common.settings import OFFICIAL_REGISTRY_URL, Settings
from registry_sync.fetch import Fetcher, is_supported, scheme_of
from registry_sync.file_policy import file_path
from registry_sync.merge import encode_entries, merge
from registry_sync.packages import PACKAGES
from registry_sync.publish import CatalogPublisher
from registry_sync.registry import (
    BUNDLED_AT,
    Failed,
    Fresh,
    Outcome,
    Registry,
    bundled_document,
    check,
    digest_and_parse,
)
from registry_sync.state import ConfigStore, ContentInfo, CustomService
from registry_sync.validate import CUSTOM_REQUIRED, DocumentError, EntryError, check_entry

logger = logging.getLogger(__name__)

CUSTOM = "custom"
"""CatalogEntry.origin of services added through the API."""


class RegistrySyncer:
    def __init__(
        self,
        settings: Settings,
        store: ConfigStore,
        publisher: CatalogPublisher,
        fetcher: Fetcher,
        bundled_url: str = OFFICIAL_REGISTRY_URL,
    ) -> None:
        self.settings = settings
        self.bundled_url = bundled_url
        """The registry whose content ships with premd (registry_sync/bundled/main.json)."""
        self.store = store
        self.publisher = publisher
        self.fetcher = fetcher
        self.registries: dict[str, Registry] = {}
        self.custom: list[CatalogEntry] = []
        self.packages: list[CatalogEntry] = []
        """Ready model packages (registry_sync/packages.py), kept current from KV_PACKAGES."""
        self.merged: list[CatalogEntry] = []
        self._lock = asyncio.Lock()

    # ---------------------------------------------------------------- start-up

    async def load(self) -> None:
        """Publish from what is stored (or bundled) without touching the network."""
        urls = await self.store.seed_registries(self.settings.registry_urls)
        meta = self.publisher.meta
        published = {status.url: status for status in meta.registries} if meta is not None else {}
        for url in urls:
            registry = self.registries[url] = await self._restore(url)
            if (last := published.get(url)) is not None and last.fetched_at == registry.fetched_at:
                # Health as last published, so that a restart alone is not a catalog change.
                registry.status, registry.error, registry.checked_at = last.status, last.error, last.checked_at
        self.custom = [entry for stored in await self.store.custom_services() if (entry := _restore_custom(stored))]
        async with self._lock:
            await self._publish()

    async def _restore(self, url: str) -> Registry:
        registry = Registry(url)
        stored = await self.store.load_content(url)
        if stored is not None:
            info, body = stored
            bundled = False
        elif url == self.bundled_url:
            body = await asyncio.to_thread(bundled_document)
            info = ContentInfo(url=url, sha256="", size=len(body), fetched_at=BUNDLED_AT)
            bundled = True
        else:
            return registry
        try:
            sha, loaded = await asyncio.to_thread(digest_and_parse, body, url, None)
        except DocumentError as exc:
            logger.warning("stored content of %s is unusable (%s); waiting for a fetch", url, exc)
            return registry
        assert loaded is not None
        if info.sha256 and sha != info.sha256:
            # A crash between the object and its record: the body is good, the validators may not match it.
            logger.warning("stored content of %s does not match its record; it will be fetched in full", url)
            info = msgspec.structs.replace(info, etag=None, last_modified=None)
        registry.load(loaded, msgspec.structs.replace(info, sha256=sha), bundled=bundled)
        return registry

    # ---------------------------------------------------------------- queries

    def statuses(self) -> list[RegistryStatus]:
        return [registry.to_status() for registry in self.registries.values()]

    async def list(self) -> list[RegistryStatus]:
        """Statuses once any change in progress is published: what the list says, the catalog holds."""
        async with self._lock:
            return self.statuses()

    async def snapshot(self) -> CatalogSnapshot:
        async with self._lock:
            return self._snapshot()

    def _snapshot(self) -> CatalogSnapshot:
        meta = self.publisher.meta
        return CatalogSnapshot(
            generation=self.publisher.generation,
            services=self.merged,
            registries=self.statuses(),
            updated_at=meta.updated_at if meta is not None else 0.0,
        )

    # ---------------------------------------------------------------- commands

    async def refresh(self, url: str | None = None) -> RefreshResult:
        """Check one registry (or all) now: conditional fetches, then one publish if anything changed."""
        if url is not None and url not in self.registries:
            raise error_for(Code.REGISTRY_UNKNOWN, f"registry {url} is not configured")
        targets = [self.registries[url]] if url is not None else list(self.registries.values())
        started = [registry.begin_check() for registry in targets]
        outcomes = await asyncio.gather(*(check(self.fetcher, registry.url, registry) for registry in targets))
        async with self._lock:
            saves = [
                self._apply(registry, outcome)
                for registry, seq, outcome in zip(targets, started, outcomes, strict=True)
                # Skipped: removed (or removed and added again) meanwhile, or a check started later was applied.
                if self.registries.get(registry.url) is registry and registry.is_current(seq)
            ]
            event = await self._publish_and_save(saves)
        return RefreshResult(
            generation=self.publisher.generation,
            registries=self.statuses(),
            added=event.added if event else [],
            removed=event.removed if event else [],
            changed=event.changed if event else [],
        )

    async def add_registry(self, url: str) -> RegistryStatus:
        """premd's order: fetch first; a registry that cannot be fetched and validated is not added."""
        if not is_supported(url):
            raise error_for(
                Code.REGISTRY_UNSUPPORTED_SCHEME, f"unsupported URL scheme {scheme_of(url)!r} (use http, https or file)"
            )
        if url in self.registries:
            raise error_for(Code.REGISTRY_DUPLICATE, f"registry {url} is already configured")
        if scheme_of(url) == "file" and (refusal := self.fetcher.file_policy.refusal(file_path(url))):
            raise error_for(Code.REGISTRY_FILE_NOT_ALLOWED, refusal)
        outcome = await check(self.fetcher, url, None)
        if isinstance(outcome, Failed):
            raise error_for(Code.REGISTRY_FETCH_FAILED, f"{url}: {outcome.error}")
        async with self._lock:
            urls = await self.store.add_registry(url)
            registry = Registry(url)
            self.registries = {u: self.registries.get(u) or (registry if u == url else Registry(u)) for u in urls}
            await self._publish_and_save([self._apply(registry, outcome)])
        return registry.to_status()

    async def remove_registry(self, url: str) -> None:
        """Drop the registry and only the services that came from it (premd also drops same-id services)."""
        if url not in self.registries:
            raise error_for(Code.REGISTRY_UNKNOWN, f"registry {url} is not configured")
        async with self._lock:
            urls = await self.store.remove_registry(url)
            self.registries = {u: self.registries.get(u) or Registry(u) for u in urls}
            await self._publish()
            await self.store.drop_content(url)

    async def add_custom(self, raw: dict[str, Any]) -> CatalogEntry:
        try:
            entry = check_entry(raw, CUSTOM, CUSTOM_REQUIRED)
        except EntryError as exc:
            raise error_for(Code.SERVICE_INVALID, f"invalid service: {exc}") from None
        sid = entry.manifest.id
        async with self._lock:
            if any(e.manifest.id == sid for e in self.merged):
                raise error_for(Code.SERVICE_DUPLICATE, f"a service with id {sid!r} already exists")

            def add(services: list[CustomService]) -> list[CustomService]:
                if any(s.manifest.get("id") == sid for s in services):
                    raise error_for(Code.SERVICE_DUPLICATE, f"a service with id {sid!r} already exists")
                return [*services, CustomService(manifest=raw, added_at=time.time())]

            await self.store.update_custom(add)
            self.custom = [*self.custom, entry]
            await self._publish()
        return entry

    async def remove_custom(self, sid: str) -> None:
        async with self._lock:
            if not any(e.manifest.id == sid for e in self.custom):
                raise error_for(Code.SERVICE_NOT_FOUND, f"no custom service with id {sid!r}")
            await self.store.update_custom(lambda services: [s for s in services if s.manifest.get("id") != sid])
            self.custom = [e for e in self.custom if e.manifest.id != sid]
            await self._publish()

    async def set_packages(self, entries: typing.List[CatalogEntry]) -> None:  # noqa: UP006 (the list method)
        """packages: the ready packages changed (or not: nothing is published then)."""
        async with self._lock:
            if entries == self.packages:
                return
            self.packages = entries
            await self._publish()

    # ---------------------------------------------------------------- internals (under the lock)

    def _apply(self, registry: Registry, outcome: Outcome) -> Awaitable[None] | None:
        """Take a fetch's outcome in memory; returns the saving of the registry's content, if any, to await."""
        if isinstance(outcome, Failed):
            logger.warning("registry %s: %s (keeping its last good content)", registry.url, outcome.error)
        info = registry.apply(outcome, time.time())
        if info is None:
            return None
        return self.store.save_content(info, outcome.body if isinstance(outcome, Fresh) else None)

    async def _publish_and_save(self, saves: Sequence[Awaitable[None] | None]) -> CatalogChanged | None:
        """Publish the catalog while the fetched documents are saved: the two are independent (a crash in
        between only means the next start fetches again), and for a large registry both take a while."""
        results = await asyncio.gather(self._publish(), *(save for save in saves if save is not None))
        event: CatalogChanged | None = results[0]
        return event

    async def _publish(self) -> CatalogChanged | None:
        merged = merge([r.entries for r in self.registries.values()], [*self.custom, *self.packages])
        wire = {url: r.encoded for url, r in self.registries.items()} | {CUSTOM: encode_entries(self.custom)}
        wire[PACKAGES] = encode_entries(self.packages)
        encoded = {e.manifest.id: wire[e.origin][e.manifest.id] for e in merged}
        event = await self.publisher.publish(encoded, self.statuses())
        self.merged = merged
        if event is not None:
            logger.info(
                "catalog generation %d: %d added, %d removed, %d changed",
                event.generation,
                len(event.added),
                len(event.removed),
                len(event.changed),
            )
        return event


def _restore_custom(stored: CustomService) -> CatalogEntry | None:
    try:
        return check_entry(stored.manifest, CUSTOM, CUSTOM_REQUIRED)
    except EntryError as exc:
        logger.warning("stored custom service %r no longer validates (%s); not listed", stored.manifest.get("id"), exc)
        return None
