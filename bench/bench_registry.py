"""Benchmark: fetch + validate + publish of a 10,000-manifest registry, and its refresh when unchanged.

Run: ``.venv/bin/python -m bench.bench_registry [--manifests 10000] [--runs 5]``. Starts its own nats-server
(JetStream in a temporary directory) and a local HTTP server, drives registry_sync over the bus, prints a
table and writes it to bench/results/registry.md.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
from aiohttp import web

from common import bus, subjects
from common.embedded_nats import EmbeddedNats
from common.messages import Ack, AddRegistry, RefreshRegistries, RefreshResult, RegistryStatus, RemoveRegistry
from common.settings import Settings
from registry_sync.component import RegistrySync
from registry_sync.merge import encode_entries
from registry_sync.validate import parse_document

ROOT = Path(__file__).resolve().parents[1]
MAIN = ROOT / "registry_sync" / "bundled" / "main.json"
RESULTS = ROOT / "bench" / "results" / "registry.md"


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


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


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


def table(count: int, runs: int, sets: dict[str, dict[str, list[float]]]) -> str:
    lines = [
        f"# registry_sync benchmark: {count} manifests, median of {runs} runs",
        "",
        f"- CPU: {cpu_model()}, {os.cpu_count()} logical cores",
        f"- Python {platform.python_version()} on {platform.system()} {platform.release()}",
        f"- load average at the end: {', '.join(f'{x:.1f}' for x in os.getloadavg())} (other work shares the machine)",
        "- nats-server (embedded, JetStream file storage in a temp dir) and the HTTP server on 127.0.0.1;",
        "  times are bus round trips measured by a client (request to reply).",
        "",
        "| variant | document | step | median | min | max |",
        "|---|---|---|---|---|---|",
    ]
    for variant, results in sets.items():
        size = f"{results['size_mb'][0]:.1f} MB"
        for step, values in results.items():
            if step == "size_mb":
                continue
            median, low, high = (f"{v * 1000:.0f} ms" for v in (statistics.median(values), min(values), max(values)))
            lines.append(f"| {variant} | {size} | {step} | {median} | {low} | {high} |")
    return "\n".join(lines) + "\n"


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--manifests", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    sets = {
        "compact (no documentation)": await measure(args.manifests, args.runs, documentation=False),
        "full (main's READMEs)": await measure(args.manifests, args.runs, documentation=True),
    }
    text = table(args.manifests, args.runs, sets)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text)
    print(text)


if __name__ == "__main__":
    asyncio.run(main())
