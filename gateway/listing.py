"""premd's service list from the gateway view, encoded once per version of what it is made of.

Prem App polls ``GET /v1/services/`` every 10 s; the answer changes only when the catalog, a service's
observed state or the host facts change, so the encoded JSON is kept until one of them does. When one
of them changes, only the services it touched are encoded again: each service's JSON is kept with the
inputs it was made from (entry, observed state, fit flags), and the list is those pieces joined.
"""

from __future__ import annotations

from typing import NamedTuple

import msgspec

from common.fit import Fit
from common.messages import CatalogEntry, HostFacts, ServiceState
from gateway.schemas import Service
from gateway.service_json import fit_of, proxy_base_url, service_json
from gateway.view import GatewayView

MAX_ORIGINS = 8
"""Distinct ``scheme://host`` the list is kept for at once (baseUrl depends on how the client reached us)."""


class _Piece(NamedTuple):
    entry: CatalogEntry
    state: ServiceState | None
    facts: HostFacts | None
    fit: Fit
    service: Service
    data: bytes


class _OriginCache:
    def __init__(self) -> None:
        self.version: tuple[object, ...] = ()
        self.pieces: dict[str, _Piece] = {}
        self.listing: tuple[list[Service], bytes] = ([], b"[]")


class Listing:
    def __init__(self, view: GatewayView) -> None:
        self._view = view
        self._by_origin: dict[str, _OriginCache] = {}

    def _current(self) -> tuple[object, ...]:
        # The meta and the host facts are replaced (never mutated) on every KV update: identity is their version.
        view = self._view
        return (view.catalog.meta, view.catalog.entries_mirror.revision, view.observed.revision, view.host)

    def services(self, scheme: str, host: str) -> tuple[list[Service], bytes]:
        """Every service in catalog order, and that list encoded as JSON."""
        version = self._current()
        origin = f"{scheme}://{host}"
        cache = self._by_origin.get(origin)
        if cache is None:
            if len(self._by_origin) >= MAX_ORIGINS:
                self._by_origin.clear()
            cache = self._by_origin[origin] = _OriginCache()
        elif _same(version, cache.version):
            return cache.listing
        cache.version = version
        cache.pieces = self._pieces(cache.pieces, scheme, host)
        services = [piece.service for piece in cache.pieces.values()]
        cache.listing = (services, _json_array([piece.data for piece in cache.pieces.values()]))
        return cache.listing

    def _pieces(self, old: dict[str, _Piece], scheme: str, host: str) -> dict[str, _Piece]:
        view = self._view
        facts = view.host
        pieces: dict[str, _Piece] = {}
        for entry in view.catalog.entries():
            service_id = entry.manifest.id
            state = view.state(service_id)
            piece = old.get(service_id)
            if piece is not None and piece.entry is entry and piece.state is state:
                if piece.facts is facts:
                    pieces[service_id] = piece
                    continue
                fit = fit_of(entry, state, facts)
                if fit == piece.fit:  # new host facts that do not change this service's flags
                    pieces[service_id] = piece._replace(facts=facts)
                    continue
            else:
                fit = fit_of(entry, state, facts)
            service = service_json(entry, state, facts, proxy_base_url(scheme, host, service_id), fit)
            pieces[service_id] = _Piece(entry, state, facts, fit, service, msgspec.json.encode(service))
        return pieces

    def one(self, service_id: str, scheme: str, host: str) -> Service | None:
        entry = self._view.catalog.get(service_id)
        if entry is None:
            return None
        base_url = proxy_base_url(scheme, host, service_id)
        return service_json(entry, self._view.state(service_id), self._view.host, base_url)


def _json_array(items: list[bytes]) -> bytes:
    """``[a,b,...]`` in one copy (the list is megabytes: ``b"[" + b",".join(...) + b"]"`` copies it twice)."""
    parts = [b","] * (2 * len(items) + 1)
    parts[0], parts[-1] = b"[", b"]"
    parts[1:-1:2] = items
    return b"".join(parts) if items else b"[]"


def _same(a: tuple[object, ...], b: tuple[object, ...]) -> bool:
    return len(a) == len(b) and all(x is y or x == y for x, y in zip(a, b, strict=True))
