"""Scheduler benchmark: create-to-ready of the reference service through premd vs plain aiodocker, side by side.

One run, interleaved so that drift hits both alike:
- premd: ``StartService`` over NATS to a scheduler process (``python -m scheduler``, as premd runs it) until
  its "succeeded" (ready) event; then ``StopService``.
- plain: aiodocker create + start of the same image with the same port binding, then ``GET /v1/`` polled
  every 10 ms until 200; then force-delete.
- acceptance: the time ``StartService`` takes to be answered (validated, fit-checked, desired state in KV).

Part of ``python -m bench``. Needs the Docker engine and the reference image (built by the test bed when missing).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiodocker
import aiohttp
import msgspec
import nats
from nats.aio.client import Client as NATS

from bench.core import ROOT, Figure, Progress, free_port
from common import bus, subjects
from common.embedded_nats import EmbeddedNats
from common.jetstream import ensure_resources, kv_bucket, kv_get
from common.manifest import Manifest
from common.messages import (
    CatalogEntry,
    CatalogMeta,
    OperationAccepted,
    OperationEvent,
    ServiceState,
    ServiceStopped,
    StartService,
    StopService,
)
from tests.testbed.base_image import BASE_IMAGE, ensure_base_image
from tests.testbed.images import REF_IMAGE, REF_PORT, ensure_ref_image

DEADLINE_S = 60.0
PLAIN_POLL_S = 0.01


async def _put_catalog(nc: NATS, manifest: Manifest) -> None:
    js = nc.jetstream()
    await ensure_resources(js)
    kv = await kv_bucket(js, subjects.KV_CATALOG)
    entry = CatalogEntry(manifest=manifest, origin="bench")
    await kv.put(subjects.catalog_key(manifest.id), msgspec.json.encode(entry))
    meta = CatalogMeta(generation=1, order=[manifest.id], registries=[], updated_at=time.time())
    await kv.put(subjects.CATALOG_META_KEY, msgspec.json.encode(meta))


async def _wait_downloaded(nc: NATS, service_id: str) -> None:
    kv = await kv_bucket(nc.jetstream(), subjects.KV_OBSERVED)
    async with asyncio.timeout(DEADLINE_S):
        while True:
            state, _ = await kv_get(kv, service_id, ServiceState)
            if state is not None and state.downloaded:
                return
            await asyncio.sleep(0.05)  # poll interval


async def _premd_once(nc: NATS, service_id: str) -> tuple[float, float]:
    """(acceptance s, create-to-ready s) for one start through the scheduler; the service is stopped after."""
    ready: asyncio.Future[OperationEvent] = asyncio.get_running_loop().create_future()

    async def on_event(msg: Any) -> None:
        event = msgspec.json.decode(msg.data, type=OperationEvent)
        if event.type in ("succeeded", "failed") and event.kind == "start" and not ready.done():
            ready.set_result(event)

    sub = await nc.subscribe(subjects.service_events_filter(service_id), cb=on_event)
    await nc.flush()
    t0 = time.perf_counter()
    await bus.request(nc, subjects.SCHEDULER_START, StartService(service_id=service_id), OperationAccepted, 10)
    accepted = time.perf_counter() - t0
    event = await asyncio.wait_for(ready, DEADLINE_S)
    total = time.perf_counter() - t0
    await sub.unsubscribe()
    if event.type != "succeeded":
        raise RuntimeError(f"premd start failed: {event}")
    await bus.request(nc, subjects.SCHEDULER_STOP, StopService(service_id=service_id), ServiceStopped, 30)
    return accepted, total


async def _plain_once(docker: aiodocker.Docker, http: aiohttp.ClientSession, image: str) -> float:
    port = free_port()
    key = f"{REF_PORT}/tcp"
    config: dict[str, Any] = {
        "Image": image,
        "ExposedPorts": {key: {}},
        "HostConfig": {"PortBindings": {key: [{"HostIp": "127.0.0.1", "HostPort": str(port)}]}},
    }
    t0 = time.perf_counter()
    container = await docker.containers.create(config, name=f"bench-plain-{uuid.uuid4().hex[:8]}")
    try:
        await container.start()
        url = f"http://127.0.0.1:{port}/v1/"
        async with asyncio.timeout(DEADLINE_S):
            while True:
                try:
                    async with http.get(url) as resp:
                        await resp.read()
                        if resp.status == 200:
                            return time.perf_counter() - t0
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(PLAIN_POLL_S)  # poll interval
    finally:
        await container.delete(force=True)


async def _remove_service_containers(service_id: str) -> None:
    async with aiodocker.Docker() as docker:
        filters = json.dumps({"label": [f"io.premd.service={service_id}"]})
        for container in await docker.containers.list(all=True, filters=filters):
            await container.delete(force=True)


async def run(figures: dict[str, Figure], progress: Progress, quick: bool, reps: int) -> None:
    runs = 3 if quick else 5 * reps
    progress.step(f"scheduler: create-to-ready, {runs} starts each way")
    async with aiodocker.Docker() as docker:
        image = await ensure_ref_image(docker, REF_IMAGE, ensure_base_image(BASE_IMAGE))
    with tempfile.TemporaryDirectory(prefix="premd-bench-sched-") as tmp:
        server = EmbeddedNats(Path(tmp) / "nats", port=0)
        await server.start()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PREMD_", "PREM_"))}
        env.update(PREMD_NATS_URL=server.url, PREMD_LOG_LEVEL="WARNING")
        proc = None
        service_id = f"bench-{uuid.uuid4().hex[:8]}"
        try:
            nc = await nats.connect(server.url)
            raw = {
                "id": service_id,
                "name": "Bench",
                "interfaces": ["chat"],
                "dockerImages": {"cpu": {"image": image, "size": 1}},
                "defaultPort": REF_PORT,
                "defaultExternalPort": free_port(),
            }
            await _put_catalog(nc, msgspec.convert(raw, Manifest))
            proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "scheduler", env=env, cwd=ROOT)
            await _wait_downloaded(nc, service_id)
            premd: list[float] = []
            accept: list[float] = []
            plain: list[float] = []
            async with aiodocker.Docker() as docker, aiohttp.ClientSession() as http:
                await _premd_once(nc, service_id)  # warm-up (page cache, first connection)
                await _plain_once(docker, http, image)
                for _ in range(runs):
                    a, total = await _premd_once(nc, service_id)
                    accept.append(a)
                    premd.append(total)
                    plain.append(await _plain_once(docker, http, image))
            await nc.close()
        finally:
            if proc is not None and proc.returncode is None:
                proc.terminate()
                await proc.wait()
            await _remove_service_containers(service_id)  # a run cut short leaves the last start's container
            await server.stop()
    plain_fig = figures.setdefault(
        "lifecycle.ready.plain", Figure("lifecycle.ready.plain", "create-to-ready: aiodocker create + start + poll")
    )
    plain_fig.add_run(plain)
    figures.setdefault(
        "lifecycle.ready.premd",
        Figure(
            "lifecycle.ready.premd",
            "create-to-ready: premd StartService to its ready event",
            baseline="lifecycle.ready.plain",
            goal="within 50 ms of plain",
        ),
    ).add_run(premd)
    figures.setdefault(
        "lifecycle.accept", Figure("lifecycle.accept", "StartService acceptance (reply)", goal="under 5 ms")
    ).add_run(accept)
