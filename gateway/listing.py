"""premd's service list from the gateway view, encoded once per version of what it is made of.

Prem App polls ``GET /v1/services/`` every 10 s; the answer changes only when the catalog, a service's
observed state or the host facts change, so the encoded JSON is kept until one of them does.
"""

from __future__ import annotations

import msgspec

from gateway.schemas import Service
from gateway.service_json import proxy_base_url, service_json
from gateway.view import GatewayView

MAX_ORIGINS = 8
"""Distinct ``scheme://host`` the list is kept for at once (baseUrl depends on how the client reached us)."""


class Listing:
    def __init__(self, view: GatewayView) -> None:
        self._view = view
        self._version: tuple[object, ...] = ()
        self._by_origin: dict[str, tuple[list[Service], bytes]] = {}

    def _current(self) -> tuple[object, ...]:
        # The meta and the host facts are replaced (never mutated) on every KV update: identity is their version.
        view = self._view
        return (view.catalog.meta, view.catalog.entries_mirror.revision, view.observed.revision, view.host)

    def services(self, scheme: str, host: str) -> tuple[list[Service], bytes]:
        """Every service in catalog order, and that list encoded as JSON."""
        version = self._current()
        if not _same(version, self._version):
            self._version = version
            self._by_origin.clear()
        origin = f"{scheme}://{host}"
        cached = self._by_origin.get(origin)
        if cached is None:
            view = self._view
            services = [
                service_json(
                    entry, view.state(entry.manifest.id), view.host, proxy_base_url(scheme, host, entry.manifest.id)
                )
                for entry in view.catalog.entries()
            ]
            cached = (services, msgspec.json.encode(services))
            if len(self._by_origin) >= MAX_ORIGINS:
                self._by_origin.clear()
            self._by_origin[origin] = cached
        return cached

    def one(self, service_id: str, scheme: str, host: str) -> Service | None:
        entry = self._view.catalog.get(service_id)
        if entry is None:
            return None
        base_url = proxy_base_url(scheme, host, service_id)
        return service_json(entry, self._view.state(service_id), self._view.host, base_url)


def _same(a: tuple[object, ...], b: tuple[object, ...]) -> bool:
    return len(a) == len(b) and all(x is y or x == y for x, y in zip(a, b, strict=True))
