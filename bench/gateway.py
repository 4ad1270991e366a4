"""The gateway's figures: the proxy against the service direct, the service list, the loop under CPU work.

Processes (each its own, like ``premd serve`` and a model service): a fast stand-in service (aiohttp with
TCP_NODELAY, so that the proxy's fraction of a millisecond is not lost in the service's own time), the
gateway twice (``premd``: the byte-stream front on uvloop, as the component runs it; ``aiohttp route``: the
same app behind a plain aiohttp site on asyncio, what premd was before), and the least an aiohttp reverse
proxy can do (``floor``). The client is plain ``http.client`` on keep-alive connections for latency, and a
minimal asyncio client for throughput. Variants run interleaved in blocks, so drift hits all alike.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import aiohttp
import msgspec
import nats
from aiohttp import web
from yarl import URL

from bench.core import ROOT, Figure, Progress, free_port, spawn, stop_all, wait_ok
from common import subjects
from common.embedded_nats import EmbeddedNats
from common.jetstream import ensure_resources, kv_bucket
from common.manifest import Manifest
from common.messages import CatalogEntry, CatalogMeta, HostFacts, ServiceState
from common.settings import Settings

BUNDLED = ROOT / "registry_sync" / "bundled" / "main.json"
FAST_ID = "bench-fast"
CONCURRENCY = 16
EMBED = msgspec.json.encode({"model": FAST_ID, "input": "x" * 2000})  # a 2 KB embeddings request


# ---------------------------------------------------------------- child processes


async def serve_gateway(nats_url: str, port: int, front: bool, busy: bool) -> None:
    from gateway.app import create_app
    from gateway.forwarding import Front

    settings = Settings(host="127.0.0.1", port=port, nats_url=nats_url, registry_urls=())
    nc = await nats.connect(nats_url)
    app = create_app(settings, nc)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    if front:
        await Front(runner, app).start("127.0.0.1", port)
    else:
        await web.TCPSite(runner, "127.0.0.1", port).start()
    if busy:
        _ = asyncio.get_running_loop().create_task(_registry_work())
    await asyncio.Event().wait()


async def _registry_work() -> None:
    """registry_sync's validation of a 10,000-manifest document once a second, on this loop (one process)."""
    from bench.registry import generate
    from registry_sync.validate import parse_document

    body = generate(10_000, documentation=False)
    while True:
        parse_document(body, "bench")
        await asyncio.sleep(1.0)  # a refresh a second: far more often than real, so the samples meet it


async def serve_upstream(port: int) -> None:
    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": True})

    async def embeddings(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": [0.5]}]})

    app = web.Application()
    app.router.add_get("/v1/", health)
    app.router.add_post("/v1/embeddings", embeddings)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await asyncio.Event().wait()


async def serve_bytes(port: int, body: bytes) -> None:
    """The least a server can do to answer the service list: the same bytes, head then body."""
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)

    class Answer(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = cast(asyncio.Transport, transport)
            self.pending = b""

        def data_received(self, data: bytes) -> None:
            self.pending += data
            while b"\r\n\r\n" in self.pending:  # a GET without a body: one answer per head
                _, self.pending = self.pending.split(b"\r\n\r\n", 1)
                self.transport.write(head)
                self.transport.write(body)

    await asyncio.get_running_loop().create_server(Answer, "127.0.0.1", port)
    await asyncio.Event().wait()


async def serve_floor(port: int, upstream_port: int) -> None:
    """The least an aiohttp reverse proxy can do (no security, CORS, metrics, lookups)."""
    session = aiohttp.ClientSession(auto_decompress=False)

    async def forward(request: web.Request) -> web.StreamResponse:
        url = URL(f"http://127.0.0.1:{upstream_port}/{request.match_info['path']}", encoded=True)
        data = request.content.iter_any() if request.body_exists else None
        async with session.request(request.method, url, data=data, headers=request.headers) as upstream:
            response = web.StreamResponse(status=upstream.status, headers=upstream.headers)
            await response.prepare(request)
            while chunk := await upstream.content.readany():
                await response.write(chunk)
            await response.write_eof()
            return response

    app = web.Application()
    app.router.add_route("*", "/floor/{path:.*}", forward)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await asyncio.Event().wait()


# ---------------------------------------------------------------- fixtures


def catalog(size: int, ports: dict[str, int]) -> list[CatalogEntry]:
    """``size`` services made from the real registry's manifests (distinct ids); ``ports``' ids first."""
    raw = json.loads(BUNDLED.read_text())
    entries = [
        CatalogEntry(manifest=Manifest(id=sid, name=sid, interfaces=["embeddings"]), origin="bench") for sid in ports
    ]
    i = 0
    while len(entries) < size:
        item = dict(raw[i % len(raw)], id=f"{raw[i % len(raw)]['id']}-{i}")
        entries.append(CatalogEntry(manifest=msgspec.convert(item, Manifest), origin="https://registry.example/x.json"))
        i += 1
    return entries


async def seed(js: nats.js.JetStreamContext, entries: list[CatalogEntry], ports: dict[str, int]) -> None:
    kv = await kv_bucket(js, subjects.KV_CATALOG)
    for at in range(0, len(entries), 200):  # in batches: JetStream answers each put
        batch = entries[at : at + 200]
        await asyncio.gather(*(kv.put(subjects.catalog_key(e.manifest.id), msgspec.json.encode(e)) for e in batch))
    meta = CatalogMeta(generation=1, order=[e.manifest.id for e in entries], registries=[], updated_at=time.time())
    await kv.put(subjects.CATALOG_META_KEY, msgspec.json.encode(meta))
    observed = await kv_bucket(js, subjects.KV_OBSERVED)
    for service_id, port in ports.items():
        state = ServiceState(service_id=service_id, phase="ready", running=True, ready=True, host_port=port)
        await observed.put(service_id, msgspec.json.encode(state))
    await put_facts(js, 0)


async def put_facts(js: nats.js.JetStreamContext, tick: int) -> None:
    """Host facts as the scheduler rewrites them: available memory and free disk move a little each time."""
    kv = await kv_bucket(js, subjects.KV_HOST)
    facts = HostFacts(
        gpus=[],
        memory_total_bytes=24 << 30,
        memory_available_bytes=(16 << 30) + tick * 4096,
        disk_free_bytes=(200 << 30) - tick * 4096,
        disk_total_bytes=500 << 30,
        docker_available=True,
        updated_at=time.time(),
    )
    await kv.put(subjects.HOST_FACTS_KEY, msgspec.json.encode(facts))


# ---------------------------------------------------------------- clients


class Serial:
    """Requests one after another on one keep-alive ``http.client`` connection."""

    def __init__(self, port: int, method: str, path: str, body: bytes | None = None) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port)
        self.method, self.path, self.body = method, path, body
        self.headers = {"Content-Type": "application/json"} if body else {}

    def once(self) -> float:
        start = time.perf_counter()
        self.conn.request(self.method, self.path, body=self.body, headers=self.headers)
        response = self.conn.getresponse()
        response.read()
        elapsed = time.perf_counter() - start
        if response.status != 200:
            raise RuntimeError(f"{self.method} {self.path}: {response.status}")
        return elapsed


class Revalidating(Serial):
    """``GET`` with ``If-None-Match`` of the last answer's ETag, its body kept for a 304: a browser's HTTP cache."""

    def __init__(self, port: int, path: str) -> None:
        super().__init__(port, "GET", path)
        self.kept = b""
        self.etag = ""
        self.not_modified = 0

    def once(self) -> float:
        headers = {"If-None-Match": self.etag} if self.kept else {}
        start = time.perf_counter()
        self.conn.request("GET", self.path, headers=headers)
        response = self.conn.getresponse()
        body = response.read()
        if response.status == 304:
            body = self.kept
            self.not_modified += 1
        elapsed = time.perf_counter() - start
        if response.status not in (200, 304) or not body:
            raise RuntimeError(f"GET {self.path}: {response.status}")
        self.kept, self.etag = body, response.headers.get("ETag", "")
        return elapsed


def interleaved(calls: dict[str, Callable[[], float]], total: int, block: int = 50) -> dict[str, list[float]]:
    """Latency samples of each call, run in alternating blocks of ``block``."""
    out: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(max(1, total // block)):
        for name, call in calls.items():
            out[name].extend(call() for _ in range(block))
    return out


async def throughput(port: int, path: str, seconds: float) -> float:
    """Requests per second of ``GET path`` from CONCURRENCY keep-alive connections (a minimal client)."""
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
    stop = time.perf_counter() + seconds
    done = 0

    async def worker() -> None:
        nonlocal done
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while time.perf_counter() < stop:
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                await reader.readexactly(length)
                done += 1
        finally:
            writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return done / (time.perf_counter() - start)


# ---------------------------------------------------------------- the suite


@dataclass
class Ports:
    upstream: int
    premd: int
    before: int
    floor: int
    busy: int


async def run(figures: dict[str, Figure], progress: Progress, quick: bool, reps: int) -> None:
    with tempfile.TemporaryDirectory(prefix="premd-bench-") as tmp:
        server = EmbeddedNats(str(Path(tmp) / "nats"), port=0)
        nats_url = await server.start()
        ports = Ports(*(free_port() for _ in range(5)))
        children = [
            await spawn("-m", "bench.gateway", "--upstream", str(ports.upstream)),
            await spawn("-m", "bench.gateway", "--floor", str(ports.floor), str(ports.upstream)),
        ]
        try:
            nc = await nats.connect(nats_url)
            js = nc.jetstream()
            await ensure_resources(js)
            progress.say("seeding 1,000 services")
            await seed(js, catalog(1000, {FAST_ID: ports.upstream}), {FAST_ID: ports.upstream})
            gateways = {
                ports.premd: ("--front", "--uvloop"),
                ports.before: (),
            }
            for port, flags in gateways.items():
                children.append(await spawn("-m", "bench.gateway", "--gateway", nats_url, str(port), *flags))
            for port in (ports.upstream,):
                await wait_ok(f"http://127.0.0.1:{port}/v1/")
            await wait_ok(f"http://127.0.0.1:{ports.floor}/floor/v1/")
            for port in gateways:
                await wait_ok(f"http://127.0.0.1:{port}/proxy/{FAST_ID}/v1/")
            await _proxy(figures, progress, ports, quick, reps)
            await _loop(figures, progress, ports, nats_url, quick, reps)
            await _listing(figures, progress, js, ports, quick, reps)
            await nc.close()
        finally:
            await stop_all(children)
            await server.stop()


def _fig(figures: dict[str, Figure], key: str, title: str, **kw: object) -> Figure:
    if key not in figures:
        figures[key] = Figure(key, title, **kw)  # type: ignore[arg-type]
    return figures[key]


async def _proxy(figures: dict[str, Figure], progress: Progress, p: Ports, quick: bool, reps: int) -> None:
    total = 300 if quick else 1000
    variants = {
        "direct": (p.upstream, ""),
        "premd": (p.premd, f"/proxy/{FAST_ID}"),
        "before": (p.before, f"/proxy/{FAST_ID}"),
        "floor": (p.floor, "/floor"),
    }
    titles = {
        "direct": "straight to the service",
        "premd": "through premd (byte-stream front, uvloop)",
        "before": "through premd's aiohttp route (before)",
        "floor": "through a bare aiohttp proxy (floor)",
    }
    for rep in range(reps):
        progress.step(f"proxy latency, repetition {rep + 1}/{reps}")
        calls: dict[str, Callable[[], float]] = {}
        for name, (port, prefix) in variants.items():
            calls[f"get.{name}"] = Serial(port, "GET", f"{prefix}/v1/").once
            calls[f"embed.{name}"] = Serial(port, "POST", f"{prefix}/v1/embeddings", EMBED).once
        calls["embed.openai"] = Serial(p.premd, "POST", "/v1/embeddings", EMBED).once
        calls["embed.openai-before"] = Serial(p.before, "POST", "/v1/embeddings", EMBED).once
        await asyncio.to_thread(interleaved, calls, 100)  # warm-up: connections, caches
        samples = await asyncio.to_thread(interleaved, calls, total)
        for key, values in samples.items():
            kind, name = key.split(".")
            request = "GET /v1/" if kind == "get" else "POST /v1/embeddings (2 KB)"
            title = titles.get(name) or ("OpenAI route via premd" if name == "openai" else "OpenAI route (before)")
            base = None if name == "direct" else f"proxy.{kind}.direct"
            _fig(figures, f"proxy.{key}", f"{request}: {title}", baseline=base).add_run(values)
        progress.step(f"proxy throughput, repetition {rep + 1}/{reps}")
        seconds = 1.0 if quick else 2.0
        for name, (port, prefix) in variants.items():
            rate = await throughput(port, f"{prefix}/v1/", seconds)
            base = None if name == "direct" else "proxy.rps.direct"
            fig = _fig(
                figures,
                f"proxy.rps.{name}",
                f"GET /v1/ requests/s, {CONCURRENCY} connections: {titles[name]}",
                unit="req/s",
                baseline=base,
                higher_is_better=True,
            )
            fig.add_run([rate])


async def _loop(
    figures: dict[str, Figure], progress: Progress, p: Ports, nats_url: str, quick: bool, reps: int
) -> None:
    """The proxy while registry validation of 10,000 manifests runs each second: in the gateway's process
    (one event loop, as ``premd serve`` runs the components) and in a process of its own (premd's gateway
    next to it: its loop is free, the CPU is shared), interleaved."""
    total = 300 if quick else 1500
    children = [
        await spawn("-m", "bench.gateway", "--gateway", nats_url, str(p.busy), "--front", "--uvloop", "--busy"),
        await spawn("-m", "bench.gateway", "--registry-work"),
    ]
    try:
        await wait_ok(f"http://127.0.0.1:{p.busy}/proxy/{FAST_ID}/v1/")
        for rep in range(reps):
            progress.step(f"proxy under registry work, repetition {rep + 1}/{reps}")
            calls = {
                "apart": Serial(p.premd, "GET", f"/proxy/{FAST_ID}/v1/").once,
                "same": Serial(p.busy, "GET", f"/proxy/{FAST_ID}/v1/").once,
            }
            samples = await asyncio.to_thread(interleaved, calls, total, 100)
            titles = {
                "apart": "proxy GET /v1/, 10,000-manifest validation each second in another process",
                "same": "proxy GET /v1/, the same validation in the gateway's process (one loop)",
            }
            for name, values in samples.items():
                base = "proxy.get.premd" if name == "apart" else "loop.apart"
                _fig(figures, f"loop.{name}", titles[name], baseline=base).add_run(values)
    finally:
        await stop_all(children)


async def _listing(
    figures: dict[str, Figure], progress: Progress, js: nats.js.JetStreamContext, p: Ports, quick: bool, reps: int
) -> None:
    polls = 15 if quick else 30
    tick = 1
    for size in (1000, 10_000):
        if size == 10_000:
            progress.say("seeding 10,000 services")
            await seed(js, catalog(size, {FAST_ID: p.upstream}), {FAST_ID: p.upstream})
            await wait_listed(p.premd, size)
        # The floor: the same bytes from a server that does nothing else, to the same client, interleaved.
        floor_port, bytes_file = free_port(), Path(tempfile.mkdtemp(prefix="premd-bench-list-")) / "list.json"
        bytes_file.write_bytes(await asyncio.to_thread(_body, p.premd, "/v1/services/"))
        floor = await spawn("-m", "bench.gateway", "--bytes", str(floor_port), str(bytes_file), "--uvloop")
        try:
            await wait_ok(f"http://127.0.0.1:{floor_port}/")
            for rep in range(reps):
                progress.step(f"GET /v1/services/ with {size:,} services, repetition {rep + 1}/{reps}")
                client = Serial(p.premd, "GET", "/v1/services/")
                cached = Revalidating(p.premd, "/v1/services/")
                bare = Serial(floor_port, "GET", "/v1/services/")
                client.once()
                cached.once()
                bare.once()
                steady = [client.once() for _ in range(polls)]
                changing: list[float] = []
                revalidated: list[float] = []
                floor_samples: list[float] = []
                for _ in range(polls):
                    # A poll a second with the host facts rewritten in between, as Prem App meets it; the wait
                    # for the gateway to see the new facts replaces the rest of the second.
                    tick += 1
                    await put_facts(js, tick)
                    await asyncio.sleep(0.05)  # the KV watch delivers the new facts to the gateway
                    changing.append(await asyncio.to_thread(client.once))
                    await asyncio.sleep(0.05)  # the same pause before each of the others' polls
                    revalidated.append(await asyncio.to_thread(cached.once))
                    await asyncio.sleep(0.05)
                    floor_samples.append(await asyncio.to_thread(bare.once))
                label = f"{size:,}"
                _fig(
                    figures,
                    f"listing.{size}.revalidated",
                    f"GET /v1/services/, {label} services, host facts changed, If-None-Match (as a browser's cache)",
                    baseline=f"listing.{size}.floor",
                ).add_run(revalidated)
                _fig(
                    figures, f"listing.{size}.floor", f"the same bytes from a bare asyncio server, {label} services"
                ).add_run(floor_samples)
                _fig(
                    figures,
                    f"listing.{size}.steady",
                    f"GET /v1/services/, {label} services, nothing changed (back to back)",
                    baseline=f"listing.{size}.floor",
                ).add_run(steady)
                goal = "p50 <= 3 ms" if size == 1000 else "p50 <= 30 ms"
                _fig(
                    figures,
                    f"listing.{size}.facts",
                    f"GET /v1/services/, {label} services, host facts changed before each poll",
                    baseline=f"listing.{size}.floor",
                    goal=goal,
                ).add_run(changing)
        finally:
            await stop_all([floor])
            bytes_file.unlink()
            bytes_file.parent.rmdir()


def _body(port: int, path: str) -> bytes:
    conn = http.client.HTTPConnection("127.0.0.1", port)
    try:
        conn.request("GET", path)
        return conn.getresponse().read()
    finally:
        conn.close()


async def wait_listed(port: int, size: int) -> None:
    deadline = time.monotonic() + 60
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            async with session.get(f"http://127.0.0.1:{port}/v1/services/") as resp:
                if len(msgspec.json.decode(await resp.read())) >= size:
                    return
            await asyncio.sleep(0.2)  # poll interval
    raise TimeoutError(f"the gateway never listed {size} services")


def main() -> None:
    parser = argparse.ArgumentParser(description="bench child processes")
    parser.add_argument("--gateway", nargs=2, metavar=("NATS_URL", "PORT"))
    parser.add_argument("--front", action="store_true")
    parser.add_argument("--uvloop", action="store_true")
    parser.add_argument("--busy", action="store_true")
    parser.add_argument("--upstream", type=int)
    parser.add_argument("--floor", nargs=2, type=int)
    parser.add_argument("--registry-work", action="store_true")
    parser.add_argument("--bytes", nargs=2, metavar=("PORT", "FILE"))
    args = parser.parse_args()
    if args.uvloop:
        import uvloop

        uvloop.install()
    if args.gateway:
        asyncio.run(serve_gateway(args.gateway[0], int(args.gateway[1]), args.front, args.busy))
    elif args.upstream:
        asyncio.run(serve_upstream(args.upstream))
    elif args.floor:
        asyncio.run(serve_floor(*args.floor))
    elif args.registry_work:
        asyncio.run(_registry_work())
    elif args.bytes:
        asyncio.run(serve_bytes(int(args.bytes[0]), Path(args.bytes[1]).read_bytes()))


if __name__ == "__main__":
    os.environ.setdefault("PREMD_LOG_LEVEL", "WARNING")
    main()
