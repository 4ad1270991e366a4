"""Benchmark: fetch + validate + publish of a 10,000-manifest registry, and its refresh when unchanged.

Part of ``python -m bench``. Starts its own nats-server (JetStream in a temporary directory) and a local
HTTP server and drives registry_sync over the bus; times are bus round trips measured by a client.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
from aiohttp import web

from bench.core import ROOT, Figure, Progress
from common import bus, subjects
from common.embedded_nats import EmbeddedNats
from common.messages import Ack, AddRegistry, RefreshRegistries, RefreshResult, RegistryStatus, RemoveRegistry
from common.settings import Settings
from registry_sync.component import RegistrySync
from registry_sync.merge import encode_entries
from registry_sync.validate import parse_document

MAIN = ROOT / "registry_sync" / "bundled" / "main.json"


def generate(count: int, documentation: bool) -> bytes:
    """``count`` manifests cycling through the real main registry, each under a new id."""
    base: list[dict[str, Any]] = json.loads(MAIN.read_bytes())
    out = []
    for i in range(count):
        manifest = dict(base[i % len(base)], id=f"{base[i % len(base)]['id']}-{i}")
        if not documentation:
            manifest["documentation"] = ""
        out.append(manifest)
    return json.dumps(out).encode()


class Server:
    def __init__(self, body: bytes) -> None:
        self.body = body
        self.etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        if request.headers.get("If-None-Match") == self.etag:
            return web.Response(status=304, headers={"ETag": self.etag})
        return web.Response(body=self.body, content_type="application/json", headers={"ETag": self.etag})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/registry.json", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}/registry.json"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


async def timed(fn: Callable[[], Awaitable[object]]) -> float:
    start = time.perf_counter()
    await fn()
    return time.perf_counter() - start


async def measure(count: int, runs: int, documentation: bool) -> dict[str, list[float]]:
    body = generate(count, documentation)
    results: dict[str, list[float]] = {"size_mb": [len(body) / 1e6]}
    for _ in range(runs):
        start = time.perf_counter()
        parsed = parse_document(body, "bench")
        results.setdefault("validate only", []).append(time.perf_counter() - start)
        start = time.perf_counter()
        encode_entries(parsed.entries)
        results.setdefault("encode entries only", []).append(time.perf_counter() - start)
    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedNats(Path(tmp) / "nats", port=0)
        await server.start()
        http = Server(body)
        await http.start()
        settings = Settings(nats_url=server.url, registry_urls=(), registry_refresh_s=3600.0, data_dir=tmp)
        nc = await bus.connect(server.url, "bench-registry-sync")
        client = await bus.connect(server.url, "bench-client")
        comp = RegistrySync(settings, nc)
        await comp.start()
        await nc.flush()
        try:
            for _ in range(runs):

                async def rtt(subject: str, msg: msgspec.Struct, reply: type[msgspec.Struct]) -> float:
                    return await timed(lambda: bus.request(client, subject, msg, reply, 120))

                elapsed = await rtt(subjects.REGISTRY_ADD, AddRegistry(url=http.url), RegistryStatus)
                results.setdefault("add: fetch + validate + publish + persist", []).append(elapsed)
                elapsed = await rtt(subjects.REGISTRY_REFRESH, RefreshRegistries(), RefreshResult)
                results.setdefault("refresh, unchanged (304)", []).append(elapsed)
                # A server that ignores validators: full download and digest, still no publish.
                http.etag = '"other"' + str(time.time())
                elapsed = await rtt(subjects.REGISTRY_REFRESH, RefreshRegistries(), RefreshResult)
                results.setdefault("refresh, same bytes, no 304", []).append(elapsed)
                elapsed = await rtt(subjects.REGISTRY_REMOVE, RemoveRegistry(url=http.url), Ack)
                results.setdefault("remove (delete all entries)", []).append(elapsed)
        finally:
            await comp.stop()
            await nc.drain()
            await client.drain()
            await http.stop()
            await server.stop()
    return results


async def run(figures: dict[str, Figure], progress: Progress, quick: bool, reps: int) -> None:
    """registry_sync with 32, 1,000 and 10,000 manifests (compact documents: documentation stripped)."""
    for count in (32, 1000, 10_000):
        progress.step(f"registry: {count:,} manifests")
        results = await measure(count, 1 if quick and count == 10_000 else reps, documentation=False)
        size = results.pop("size_mb")[0]
        for step, values in results.items():
            key = f"registry.{count}.{''.join(c if c.isalnum() else '-' for c in step)}"
            title = f"registry_sync, {count:,} manifests ({size:.1f} MB): {step}"
            figures.setdefault(key, Figure(key, title)).add_run(values)
