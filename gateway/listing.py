"""premd's service list from the gateway view, encoded once per version of what it is made of.

Prem App polls ``GET /v1/services/`` every 10 s; the answer changes only when the catalog, a service's
observed state or the host facts change, so the encoded JSON is kept until one of them does. When one
of them changes, only the services it touched are encoded again: each service's JSON is kept with the
inputs it was made from (entry, observed state, fit flags), and the list is those pieces joined.

Host facts are rewritten every few seconds (free memory and disk move a little each time) but the flags
they feed flip only when a free amount crosses some service's requirement. So the sorted requirements of
the catalog are kept too: new facts that cross none of them leave the encoded list as it is, without
looking at a single service (a poll then costs what an unchanged list costs).

Each distinct encoded list also has an entity tag (``ETag``), new exactly when the bytes change: a client
that asks again with ``If-None-Match`` (a browser's HTTP cache does so by itself) gets a 304 without the
megabytes while nothing it would see has changed, host facts moving or not.
"""

from __future__ import annotations

import itertools
import secrets
from bisect import bisect_right
from collections.abc import Iterable
from typing import NamedTuple

from common import codec
from common.fit import MIB, Fit
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
        self.thresholds = _Thresholds([], [])
        self.etag = ""


class Listing:
    def __init__(self, view: GatewayView) -> None:
        self._view = view
        self._by_origin: dict[str, _OriginCache] = {}
        # Tags are this process's (a restart's lists may differ with the same count) and never reused.
        self._tag_prefix = secrets.token_hex(4)
        self._tags = itertools.count(1)

    def _current(self) -> tuple[object, ...]:
        # The meta and the host facts are replaced (never mutated) on every KV update: identity is their version.
        view = self._view
        return (view.catalog.meta, view.catalog.entries_mirror.revision, view.observed.revision, view.host)

    def services(self, scheme: str, host: str) -> tuple[list[Service], bytes]:
        """Every service in catalog order, and that list encoded as JSON."""
        return self._cache(scheme, host).listing

    def encoded(self, scheme: str, host: str) -> tuple[bytes, str]:
        """The list encoded as JSON, and its entity tag (unquoted; new whenever the bytes change)."""
        cache = self._cache(scheme, host)
        return cache.listing[1], cache.etag

    def _cache(self, scheme: str, host: str) -> _OriginCache:
        version = self._current()
        origin = f"{scheme}://{host}"
        cache = self._by_origin.get(origin)
        if cache is None:
            if len(self._by_origin) >= MAX_ORIGINS:
                self._by_origin.clear()
            cache = self._by_origin[origin] = _OriginCache()
        elif _same(version, cache.version):
            return cache
        elif _same(version[:3], cache.version[:3]) and cache.thresholds.same_flags(cache.version[3], version[3]):
            cache.version = version  # only the host facts moved, and no service's flags with them
            return cache
        cache.version = version
        cache.pieces = self._pieces(cache.pieces, scheme, host)
        cache.thresholds = _Thresholds.of(piece.entry for piece in cache.pieces.values())
        services = [piece.service for piece in cache.pieces.values()]
        body = _json_array([piece.data for piece in cache.pieces.values()])
        if not cache.etag or body != cache.listing[1]:  # a change no client would see keeps the tag
            cache.etag = f"{self._tag_prefix}-{next(self._tags)}"
        cache.listing = (services, body)
        return cache

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
            pieces[service_id] = _Piece(entry, state, facts, fit, service, codec.encode(service))
        return pieces

    def one(self, service_id: str, scheme: str, host: str) -> Service | None:
        entry = self._view.catalog.get(service_id)
        if entry is None:
            return None
        base_url = proxy_base_url(scheme, host, service_id)
        return service_json(entry, self._view.state(service_id), self._view.host, base_url)


class _Thresholds:
    """The catalog's memory requirements (MiB) and image sizes (bytes), sorted: where fit flags flip."""

    def __init__(self, needs: list[int], sizes: list[int]) -> None:
        self.needs, self.sizes = needs, sizes

    @classmethod
    def of(cls, entries: Iterable[CatalogEntry]) -> _Thresholds:
        needs: list[int] = []
        sizes: list[int] = []
        for entry in entries:
            manifest = entry.manifest
            need = manifest.memory_requirements_mib()
            if need is not None:
                needs.append(need)
            images = manifest.docker_images
            if images is not None:
                sizes.extend(image.size for image in (images.cpu, images.gpu) if image is not None)
        return cls(sorted(needs), sorted(sizes))

    def same_flags(self, old: object, new: object) -> bool:
        """True when every service's fit flags (common.fit.assess) are the same under both host facts."""
        if not isinstance(old, HostFacts) or not isinstance(new, HostFacts) or bool(old.gpus) != bool(new.gpus):
            return False
        if self._side(self.sizes, old.disk_free_bytes) != self._side(self.sizes, new.disk_free_bytes):
            return False
        for a, b in zip(_memory_mib(old), _memory_mib(new), strict=True):
            if self._side(self.needs, a) != self._side(self.needs, b):
                return False
        return True

    @staticmethod
    def _side(values: list[int], amount: int) -> int:
        """How many of ``values`` are <= ``amount`` (the requirements that amount meets)."""
        return bisect_right(values, amount)


def _memory_mib(facts: HostFacts) -> tuple[int, ...]:
    """Every free and total amount assess() compares requirements with: system RAM, and the best GPU's."""
    amounts: tuple[int, ...] = (facts.memory_available_bytes // MIB, facts.memory_total_bytes // MIB)
    if facts.gpus:
        amounts += (max(g.memory_free_mib for g in facts.gpus), max(g.memory_total_mib for g in facts.gpus))
    return amounts


def _json_array(items: list[bytes]) -> bytes:
    """``[a,b,...]`` in one copy (the list is megabytes: ``b"[" + b",".join(...) + b"]"`` copies it twice)."""
    parts = [b","] * (2 * len(items) + 1)
    parts[0], parts[-1] = b"[", b"]"
    parts[1:-1:2] = items
    return b"".join(parts) if items else b"[]"


def _same(a: tuple[object, ...], b: tuple[object, ...]) -> bool:
    return len(a) == len(b) and all(x is y or x == y for x, y in zip(a, b, strict=True))
