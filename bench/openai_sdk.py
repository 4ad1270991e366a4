"""OpenAI-client benchmark: autostart, idle stop and ``GET /v1/models``, driven by the official ``openai`` SDK.

One run, against an embedded nats-server, the scheduler on the real Docker engine running the reference
service image, and the gateway (both in this process, as ``premd serve`` runs them):

- cold request: a streamed chat for a stopped service (autostart on) until its first token, vs the same
  request when the service is ready (warm);
- idle stop: with ``X-Premd-Keep-Alive: 0``, from the end of the answer until the gateway's view shows the
  service stopped (the ordinary stop operation, container removed);
- ``GET /v1/models`` with 1,000 downloaded services in the catalog (autostart on: every one is listed).

All traffic stays on 127.0.0.1. Part of ``python -m bench`` (suite ``openai``).
"""

from __future__ import annotations

import tempfile
import time
import uuid
from pathlib import Path

import aiodocker
import aiohttp
import msgspec
import nats
import openai
from aiohttp import web
from nats.aio.client import Client as NATS

from bench.core import Figure, Progress
from common import subjects
from common.embedded_nats import EmbeddedNats
from common.jetstream import ensure_resources, kv_bucket
from common.manifest import Manifest
from common.messages import CatalogEntry, CatalogMeta, ServiceState
from common.settings import Settings
from gateway.app import create_app
from gateway.keys import VIEW
from scheduler.component import Scheduler
from tests.testbed.base_image import BASE_IMAGE, ensure_base_image
from tests.testbed.images import REF_IMAGE, REF_PORT, ensure_ref_image
from tests.testbed.util import free_port

DEADLINE_S = 60.0
CATALOG_SIZE = 1000
LISTINGS = 50


def _manifest(service_id: str, image: str) -> Manifest:
    raw = {
        "id": service_id,
        "name": service_id,
        "interfaces": ["chat"],
        "modelInfo": {"memoryRequirements": 64},
        "dockerImages": {"cpu": {"image": image, "size": 1}},
        "defaultPort": REF_PORT,
        "defaultExternalPort": free_port(),
        "envVariables": ["REF_TOKEN_DELAY_S=0"],
    }
    return msgspec.convert(raw, Manifest)


async def _put_catalog(nc: NATS, manifests: list[Manifest]) -> None:
    kv = await kv_bucket(nc.jetstream(), subjects.KV_CATALOG)
    for manifest in manifests:
        entry = CatalogEntry(manifest=manifest, origin="bench")
        await kv.put(subjects.catalog_key(manifest.id), msgspec.json.encode(entry))
    meta = CatalogMeta(generation=1, order=[m.id for m in manifests], registries=[], updated_at=time.time())
    await kv.put(subjects.CATALOG_META_KEY, msgspec.json.encode(meta))


async def _first_token(api: openai.AsyncOpenAI, model: str, keep_alive: str) -> tuple[float, float]:
    """Seconds to the first streamed token, and until the stream ended."""
    start = time.perf_counter()
    stream = await api.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "hello"}],
        stream=True,
        extra_headers={"X-Premd-Keep-Alive": keep_alive},
    )
    first = None
    async for _ in stream:
        if first is None:
            first = time.perf_counter() - start
    return first or 0.0, time.perf_counter() - start


async def _phase(app: web.Application, service_id: str, phase: str) -> None:
    await app[VIEW].observed.wait_for(
        lambda v: (s := v.get(service_id)) is not None and s.phase == phase, timeout=DEADLINE_S
    )


async def run(figures: dict[str, Figure], progress: Progress, quick: bool, reps: int) -> None:
    runs = 2 if quick else 3 * reps
    progress.step(f"OpenAI SDK: autostart, idle stop, /v1/models ({runs} runs)")
    async with aiodocker.Docker() as docker:
        image = await ensure_ref_image(docker, REF_IMAGE, ensure_base_image(BASE_IMAGE))
    service_id = f"bench-oai-{uuid.uuid4().hex[:8]}"
    cold: list[float] = []
    warm: list[float] = []
    idle: list[float] = []
    listing: list[float] = []
    with tempfile.TemporaryDirectory(prefix="premd-bench-openai-") as tmp:
        server = EmbeddedNats(Path(tmp) / "nats", port=0)
        await server.start()
        settings = Settings(
            nats_url=server.url, data_dir=tmp, registry_urls=(), autostart=True, idle_stop_s=-1.0, log_level="WARNING"
        )
        nc = await nats.connect(server.url)
        await ensure_resources(nc.jetstream())
        await _put_catalog(nc, [_manifest(service_id, image)])
        scheduler_nc = await nats.connect(server.url)
        scheduler = Scheduler(settings, scheduler_nc)
        await scheduler.start()
        scheduler_running = True
        app = create_app(settings, nc)
        runner = web.AppRunner(app)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            await app[VIEW].observed.wait_for(
                lambda v: (s := v.get(service_id)) is not None and s.downloaded, timeout=DEADLINE_S
            )
            api = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="bench", max_retries=0)
            await _first_token(api, service_id, "0")  # warm-up: page cache, first connections
            await _phase(app, service_id, "stopped")
            for _ in range(runs):
                first, _ = await _first_token(api, service_id, "-1")  # cold: autostarted, then kept up
                cold.append(first)
                first, _ = await _first_token(api, service_id, "0")  # warm; stopped once answered
                warm.append(first)
                ended = time.perf_counter()
                await _phase(app, service_id, "stopped")
                idle.append(time.perf_counter() - ended)
            await api.close()
            # The listing is the gateway's alone: the scheduler is stopped first, so that the states written
            # below (as it would write them) are not the scheduler's to reconcile.
            await scheduler.stop()
            scheduler_running = False
            progress.say(f"putting {CATALOG_SIZE} downloaded services in the catalog")
            manifests = [_manifest(f"bench-list-{i:04d}", image) for i in range(CATALOG_SIZE)]
            await _put_catalog(nc, manifests)
            observed = await kv_bucket(nc.jetstream(), subjects.KV_OBSERVED)
            for manifest in manifests:  # as the scheduler records a downloaded, stopped service
                state = ServiceState(service_id=manifest.id, downloaded=True, downloaded_image=image)
                await observed.put(manifest.id, msgspec.json.encode(state))
            await app[VIEW].observed.wait_for(lambda v: len(v) > CATALOG_SIZE, timeout=DEADLINE_S)
            await app[VIEW].catalog.entries_mirror.wait_for(lambda v: len(v) > CATALOG_SIZE, DEADLINE_S)
            async with aiohttp.ClientSession() as http:
                url = f"http://127.0.0.1:{port}/v1/models"
                count = 0
                for _ in range(LISTINGS):
                    start = time.perf_counter()
                    async with http.get(url) as resp:
                        count = len((await resp.json())["data"])
                    listing.append(time.perf_counter() - start)
            progress.say(f"listed {count} models")
        finally:
            await runner.cleanup()
            if scheduler_running:
                await scheduler.stop()
            await scheduler_nc.close()
            await nc.close()
            async with aiodocker.Docker() as docker:
                for c in await docker.containers.list(all=True):
                    if (c._container.get("Labels") or {}).get("io.premd.service") == service_id:
                        await c.delete(force=True)
            await server.stop()
    for key, title, samples in (
        ("openai.cold", "OpenAI SDK: cold (autostart) to first token", cold),
        ("openai.warm", "OpenAI SDK: warm first token", warm),
        ("openai.idle-stop", "OpenAI SDK: idle stop, answer end to stopped", idle),
        ("openai.models", f"GET /v1/models, {CATALOG_SIZE:,} listed", listing),
    ):
        figures.setdefault(key, Figure(key, title)).add_run(samples)
