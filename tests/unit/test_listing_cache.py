"""gateway.listing: the kept, incrementally encoded service list is always the plain encode of the view.

The view is a real :class:`GatewayView` whose mirrors are filled the way their KV watches fill them (values
replaced, the bucket revision moving on); random sequences of changes (catalog entries added, replaced and
removed, the order moved, observed states, host facts moving a little or a lot, a GPU appearing) must each
leave ``Listing.services`` equal, byte for byte, to encoding the whole list from scratch.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, cast

import msgspec
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from common import subjects
from common.fit import MIB
from common.jetstream import KVMirror
from common.manifest import Manifest
from common.messages import CatalogEntry, CatalogMeta, GpuInfo, HostFacts, ServiceState
from gateway.listing import Listing
from gateway.service_json import proxy_base_url, service_json
from gateway.view import GatewayView

BUNDLED = Path(__file__).resolve().parents[2] / "registry_sync" / "bundled" / "main.json"
RAW: list[dict[str, Any]] = json.loads(BUNDLED.read_text())
ORIGINS = [("http", "localhost:54321"), ("https", "premd.example"), ("http", "127.0.0.1:8000")]


class _View:
    """A GatewayView whose mirrors are written directly, as their watchers would (no NATS in a unit test)."""

    def __init__(self) -> None:
        self.view = GatewayView(cast(JetStreamContext, None))
        kv = cast(KeyValue, None)
        catalog = self.view.catalog
        catalog._meta = KVMirror(kv, CatalogMeta)
        catalog._entries = KVMirror(kv, CatalogEntry)
        self.view._observed = KVMirror(kv, ServiceState)
        self.view._host = KVMirror(kv, HostFacts)
        self.revision = 0
        self.order: list[str] = []

    def _bump(self, mirror: KVMirror[Any]) -> None:
        self.revision += 1
        mirror.revision = self.revision

    def put_entry(self, entry: CatalogEntry) -> None:
        mirror = self.view.catalog.entries_mirror
        mirror.values[subjects.catalog_key(entry.manifest.id)] = entry
        self._bump(mirror)

    def drop_entry(self, service_id: str) -> None:
        mirror = self.view.catalog.entries_mirror
        mirror.values.pop(subjects.catalog_key(service_id), None)
        self._bump(mirror)

    def put_meta(self, order: list[str]) -> None:
        self.order = order
        mirror = self.view.catalog.meta_mirror
        meta = CatalogMeta(generation=self.revision, order=list(order), registries=[], updated_at=0.0)
        mirror.values[subjects.CATALOG_META_KEY] = meta
        self._bump(mirror)

    def put_state(self, state: ServiceState) -> None:
        self.view.observed.values[state.service_id] = state
        self._bump(self.view.observed)

    def drop_state(self, service_id: str) -> None:
        self.view.observed.values.pop(service_id, None)
        self._bump(self.view.observed)

    def put_facts(self, facts: HostFacts) -> None:
        assert self.view._host is not None
        self.view._host.values[subjects.HOST_FACTS_KEY] = facts
        self._bump(self.view._host)


def _entry(rng: random.Random, service_id: str) -> CatalogEntry:
    raw = dict(rng.choice(RAW), id=service_id)
    if rng.random() < 0.3:
        raw["description"] = f"edited {rng.random()}"
    return CatalogEntry(manifest=msgspec.convert(raw, Manifest), origin="test")


def _state(rng: random.Random, service_id: str) -> ServiceState:
    running = rng.random() < 0.5
    downloaded = running or rng.random() < 0.5
    return ServiceState(
        service_id=service_id,
        phase="ready" if running else "stopped",
        running=running,
        ready=running,
        host_port=rng.randrange(1024, 65535) if running else None,
        volume_name=f"vol-{rng.randrange(100)}" if running else None,
        downloaded=downloaded,
        downloaded_image=f"img:{rng.randrange(9)}" if downloaded else None,
        needs_update=downloaded and rng.random() < 0.3,
        updated_at=rng.random(),
    )


def _facts(rng: random.Random, old: HostFacts | None) -> HostFacts:
    if old is not None and rng.random() < 0.7:  # the scheduler's refresh: free amounts move a little
        return msgspec.structs.replace(
            old,
            memory_available_bytes=max(0, old.memory_available_bytes + rng.randrange(-64, 64) * MIB),
            disk_free_bytes=max(0, old.disk_free_bytes + rng.randrange(-(1 << 30), 1 << 30)),
            updated_at=old.updated_at + 5,
        )
    gpus = []
    if rng.random() < 0.3:
        total = rng.choice([8192, 24576])
        gpus = [
            GpuInfo(
                index=0, uuid="GPU-0", name="t", memory_total_mib=total, memory_free_mib=total // 2, memory_used_mib=0
            )
        ]
    return HostFacts(
        gpus=gpus,
        memory_total_bytes=rng.choice([8, 16, 32]) << 30,
        memory_available_bytes=rng.randrange(0, 32 << 30, MIB),
        disk_free_bytes=rng.randrange(0, 64 << 30),
        disk_total_bytes=1 << 40,
        docker_available=True,
        updated_at=rng.random(),
    )


def _plain(view: GatewayView, scheme: str, host: str) -> bytes:
    services = [
        service_json(entry, view.state(entry.manifest.id), view.host, proxy_base_url(scheme, host, entry.manifest.id))
        for entry in view.catalog.entries()
    ]
    return msgspec.json.encode(services)


def _change(rng: random.Random, bed: _View, counter: list[int]) -> None:
    ids = bed.order
    roll = rng.random()
    if roll < 0.35:
        bed.put_facts(_facts(rng, bed.view.host))
    elif roll < 0.6 and ids:
        service_id = rng.choice(ids)
        if rng.random() < 0.85:
            bed.put_state(_state(rng, service_id))
        else:
            bed.drop_state(service_id)
    elif roll < 0.75 and ids:
        bed.put_entry(_entry(rng, rng.choice(ids)))  # a registry refresh replaced the entry
    elif roll < 0.85:
        counter[0] += 1
        service_id = f"svc-{counter[0]}"
        bed.put_entry(_entry(rng, service_id))
        if rng.random() < 0.8:  # the meta may lag its entries
            bed.put_meta([*ids, service_id])
    elif roll < 0.93 and ids:
        gone = rng.choice(ids)
        bed.drop_entry(gone)
        bed.put_meta([sid for sid in ids if sid != gone])
    else:
        order = list(ids)
        rng.shuffle(order)
        bed.put_meta(order)


def test_the_kept_list_is_the_plain_encode_after_every_change() -> None:
    for seed in range(6):
        rng = random.Random(seed)
        bed = _View()
        counter = [0]
        for _ in range(25):
            counter[0] += 1
            bed.put_entry(_entry(rng, f"svc-{counter[0]}"))
        bed.put_meta([f"svc-{i}" for i in range(1, counter[0] + 1)])
        if seed % 2:
            bed.put_facts(_facts(rng, None))  # odd seeds start with facts, even ones without
        listing = Listing(bed.view)
        last: dict[tuple[str, str], tuple[bytes, str]] = {}
        bodies_of_tag: dict[str, bytes] = {}
        for step in range(120):
            _change(rng, bed, counter)
            for scheme, host in rng.sample(ORIGINS, 2):
                services, body = listing.services(scheme, host)
                expected = _plain(bed.view, scheme, host)
                assert body == expected, f"seed {seed} step {step} {scheme}://{host}"
                assert msgspec.json.encode(services) == expected
                # Asked again with nothing changed: the same kept bytes.
                assert listing.services(scheme, host)[1] is body
                # The entity tag is new exactly when the bytes are, and names one body only, ever.
                encoded, tag = listing.encoded(scheme, host)
                assert encoded is body and tag
                previous = last.get((scheme, host))
                if previous is not None:
                    assert (tag == previous[1]) == (body == previous[0])
                assert bodies_of_tag.setdefault(tag, body) == body
                last[(scheme, host)] = (body, tag)


def test_host_facts_moving_within_every_requirement_keep_the_same_bytes() -> None:
    rng = random.Random(7)
    bed = _View()
    ids = [f"svc-{i}" for i in range(40)]
    for service_id in ids:
        bed.put_entry(_entry(rng, service_id))
    bed.put_meta(ids)
    facts = HostFacts(
        gpus=[],
        memory_total_bytes=1 << 40,  # more than any manifest asks for: small moves flip nothing
        memory_available_bytes=1 << 39,
        disk_free_bytes=1 << 40,
        disk_total_bytes=1 << 41,
        docker_available=True,
        updated_at=0.0,
    )
    bed.put_facts(facts)
    listing = Listing(bed.view)
    first, first_tag = listing.encoded("http", "localhost:1")
    for tick in range(1, 20):
        bed.put_facts(msgspec.structs.replace(facts, memory_available_bytes=(1 << 39) - tick * MIB, updated_at=tick))
        body, tag = listing.encoded("http", "localhost:1")
        assert body is first and tag == first_tag  # kept, not re-encoded: a revalidating client gets a 304
        assert body == _plain(bed.view, "http", "localhost:1")
    # An observed state rewritten with nothing a client sees changed: encoded again, the same bytes and tag.
    bed.put_state(ServiceState(service_id=ids[0], updated_at=1.0))
    bed.put_state(ServiceState(service_id=ids[0], updated_at=2.0))
    body, tag = listing.encoded("http", "localhost:1")
    assert body == first and tag == first_tag
    # A free amount that crosses requirements is encoded again, and still equals the plain encode.
    bed.put_facts(msgspec.structs.replace(facts, memory_available_bytes=0, disk_free_bytes=0, updated_at=99))
    body, tag = listing.encoded("http", "localhost:1")
    assert body != first and body == _plain(bed.view, "http", "localhost:1") and tag != first_tag
