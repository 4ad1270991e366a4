"""Gateway benchmark: the proxy's added latency and throughput, and ``GET /v1/services/`` with 1,000 services.

One run measures side by side, against the reference Prem service on 127.0.0.1:
- the same requests straight to the service's port and through ``/proxy/<id>`` (serial: p50/p99 latency,
  interleaved in blocks so drift hits both alike; concurrent: requests per second);
- the service list with 1,000 services in the catalog KV: steady state (the gateway keeps the encoded list)
  and right after a state change (the list is rebuilt).

The gateway runs in its own process, like ``premd serve``; NATS is an embedded nats-server. All traffic stays
on 127.0.0.1. Usage: ``.venv/bin/python bench/bench_gateway.py [--quick]``; writes bench/results/gateway.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from asyncio.subprocess import DEVNULL
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import msgspec
import nats
from aiohttp import web
from yarl import URL

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import subjects  # noqa: E402
from common.embedded_nats import EmbeddedNats  # noqa: E402
from common.jetstream import ensure_resources, kv_bucket  # noqa: E402
from common.manifest import Manifest  # noqa: E402
from common.messages import CatalogEntry, CatalogMeta, ServiceState  # noqa: E402
from common.settings import Settings  # noqa: E402

REF_SERVER = ROOT / "tests" / "testbed" / "refservice" / "server.py"
BUNDLED = ROOT / "registry_sync" / "bundled" / "main.json"
RESULTS = ROOT / "bench" / "results" / "gateway.md"
FAST_ID = "bench-fast"
REF_ID = "bench-ref"
FLOOR = "floor"
CATALOG_SIZE = 1000
DEADLINE_S = 20.0
CONCURRENCY = 16


def _say(text: str) -> None:
    print(f"[bench] {text}", file=sys.stderr, flush=True)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _wait_ok(session: aiohttp.ClientSession, url: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while True:
        try:
            async with session.get(url) as resp:
                await resp.read()
                if resp.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not answer 200 within {DEADLINE_S} s")
        await asyncio.sleep(0.05)  # poll interval


# ---------------------------------------------------------------- gateway child process


async def _serve_gateway(nats_url: str, port: int) -> None:
    from gateway.app import create_app

    settings = Settings(host="127.0.0.1", port=port, nats_url=nats_url, registry_urls=())
    nc = await nats.connect(nats_url)
    from gateway.forwarding import Front

    app = create_app(settings, nc)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    if os.environ.get("BENCH_FRONT", "1") == "1":
        await Front(runner, app).start("127.0.0.1", port)
    else:
        await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
        await nc.close()


async def _serve_upstream(port: int) -> None:
    """A fast stand-in for a model service (aiohttp, TCP_NODELAY): the proxy's cost is not lost in its own.

    The reference service (stdlib http.server) answers in ~40 ms on Linux (Nagle + delayed ACK), which would
    hide the gateway's fraction of a millisecond; it is measured too, in its own table.
    """

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": True})

    async def embeddings(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response(
            {"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": [0.5] * 8}]}
        )

    app = web.Application()
    app.router.add_get("/v1/", health)
    app.router.add_post("/v1/embeddings", embeddings)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await asyncio.Event().wait()


async def _serve_floor(port: int, upstream_port: int) -> None:
    """The least an aiohttp reverse proxy can do (no security, CORS, metrics, lookups): the gateway's floor."""
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


# ---------------------------------------------------------------- fixtures of the run


def _catalog() -> list[CatalogEntry]:
    """1,000 services made from the real registry's manifests (distinct ids)."""
    raw = json.loads(BUNDLED.read_text())
    entries = [
        CatalogEntry(manifest=Manifest(id=sid, name=sid, interfaces=["embeddings"]), origin="bench")
        for sid in (FAST_ID, REF_ID)
    ]
    i = 0
    while len(entries) < CATALOG_SIZE:
        item = dict(raw[i % len(raw)])
        item["id"] = f"{item['id']}-{i}"
        entries.append(CatalogEntry(manifest=msgspec.convert(item, Manifest), origin="https://registry.example/x.json"))
        i += 1
    return entries


async def _seed(js: nats.js.JetStreamContext, ports: dict[str, int]) -> None:
    catalog = await kv_bucket(js, subjects.KV_CATALOG)
    entries = _catalog()
    for entry in entries:
        await catalog.put(subjects.catalog_key(entry.manifest.id), msgspec.json.encode(entry))
    meta = CatalogMeta(generation=1, order=[e.manifest.id for e in entries], registries=[], updated_at=time.time())
    await catalog.put(subjects.CATALOG_META_KEY, msgspec.json.encode(meta))
    observed = await kv_bucket(js, subjects.KV_OBSERVED)
    for service_id, port in ports.items():
        state = ServiceState(service_id=service_id, phase="ready", running=True, ready=True, host_port=port)
        await observed.put(service_id, msgspec.json.encode(state))


# ---------------------------------------------------------------- measurements

Call = Callable[[], Awaitable[None]]


def _percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _serial(calls: dict[str, Call], total: int, block: int = 50) -> dict[str, list[float]]:
    """Latency samples (seconds) of each call, run in alternating blocks."""
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(total // block):
        for name, call in calls.items():
            out = samples[name]
            for _ in range(block):
                start = time.perf_counter()
                await call()
                out.append(time.perf_counter() - start)
    return samples


async def _throughput(call: Call, concurrency: int, seconds: float) -> float:
    done = 0
    stop = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < stop:
            await call()
            done += 1

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done / (time.perf_counter() - start)


def _get(session: aiohttp.ClientSession, url: str) -> Call:
    async def call() -> None:
        async with session.get(url) as resp:
            await resp.read()
            assert resp.status == 200, resp.status

    return call


def _post(session: aiohttp.ClientSession, url: str, body: bytes) -> Call:
    async def call() -> None:
        async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as resp:
            await resp.read()
            assert resp.status == 200, resp.status

    return call


async def _listing_after_change(
    session: aiohttp.ClientSession, gw: str, js: nats.js.JetStreamContext, port: int, rounds: int
) -> list[float]:
    """Latency of the first listing that shows a state change (the gateway rebuilds the list for it)."""
    observed = await kv_bucket(js, subjects.KV_OBSERVED)
    url = f"{gw}/v1/services/"
    async with session.get(url) as resp:
        previous = await resp.read()
    samples: list[float] = []
    for i in range(rounds):
        up = i % 2 == 1  # "running" flips in the listing each round
        state = ServiceState(
            service_id=REF_ID, phase="ready" if up else "stopped", running=up, ready=up, host_port=port
        )
        await observed.put(REF_ID, msgspec.json.encode(state))
        deadline = time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline:
            start = time.perf_counter()
            async with session.get(url) as resp:
                body = await resp.read()
            elapsed = time.perf_counter() - start
            if body != previous:
                samples.append(elapsed)
                previous = body
                break
        else:
            raise TimeoutError("the service list never showed the state change")
    return samples


def _machine() -> dict[str, str]:
    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": f"{cpu} ({os.cpu_count()} logical CPUs)",
        "os": platform.platform(),
        "python": platform.python_version(),
        "aiohttp": aiohttp.__version__,
    }


def _ms(value: float) -> str:
    return f"{value * 1000:.3f}"


@dataclass
class Results:
    latency: dict[str, list[float]] = field(default_factory=dict)
    throughput: dict[str, float] = field(default_factory=dict)
    listed: int = 0
    list_bytes: int = 0
    steady: list[float] = field(default_factory=list)
    rebuilt: list[float] = field(default_factory=list)


async def _measure(
    session: aiohttp.ClientSession, gw: str, nats_url: str, ports: dict[str, int], quick: bool, out: Results
) -> None:
    serial_total = 400 if quick else 4000
    fast, ref = f"http://127.0.0.1:{ports[FAST_ID]}", f"http://127.0.0.1:{ports[REF_ID]}"
    floor = f"http://127.0.0.1:{ports[FLOOR]}"
    embed = msgspec.json.encode({"model": FAST_ID, "input": "hello"})
    cases = {
        "GET /v1/ direct": _get(session, f"{fast}/v1/"),
        "GET /v1/ via /proxy": _get(session, f"{gw}/proxy/{FAST_ID}/v1/"),
        "POST /v1/embeddings direct": _post(session, f"{fast}/v1/embeddings", embed),
        "POST /v1/embeddings via /proxy": _post(session, f"{gw}/proxy/{FAST_ID}/v1/embeddings", embed),
        "POST /v1/embeddings via OpenAI route": _post(session, f"{gw}/v1/embeddings", embed),
        "GET /v1/ via bare aiohttp proxy (floor)": _get(session, f"{floor}/floor/v1/"),
        "POST /v1/embeddings via bare aiohttp proxy (floor)": _post(session, f"{floor}/floor/v1/embeddings", embed),
    }
    _say("measuring latency")
    await _serial(cases, 200)  # warm-up: connections, caches
    out.latency = await _serial(cases, serial_total)
    ref_cases = {
        "reference service GET /v1/ direct": _get(session, f"{ref}/v1/"),
        "reference service GET /v1/ via /proxy": _get(session, f"{gw}/proxy/{REF_ID}/v1/"),
    }
    out.latency |= await _serial(ref_cases, 20 if quick else 100, block=10)
    _say("measuring throughput")
    for name in ("GET /v1/ direct", "GET /v1/ via /proxy", "GET /v1/ via bare aiohttp proxy (floor)"):
        out.throughput[name] = await _throughput(cases[name], CONCURRENCY, 1.0 if quick else 5.0)
    _say("measuring the service list")
    async with session.get(f"{gw}/v1/services/") as resp:
        body = await resp.read()
    out.listed, out.list_bytes = len(msgspec.json.decode(body)), len(body)
    out.steady = (await _serial({"list": _get(session, f"{gw}/v1/services/")}, 200 if quick else 1000))["list"]
    nc = await nats.connect(nats_url)
    try:
        out.rebuilt = await _listing_after_change(session, gw, nc.jetstream(), ports[REF_ID], 10 if quick else 40)
    finally:
        await nc.close()


async def run(quick: bool) -> Results:
    results = Results()
    with tempfile.TemporaryDirectory(prefix="premd-bench-") as tmp:
        server = EmbeddedNats(Path(tmp) / "nats", port=0)
        nats_url = await server.start()
        ports = {FAST_ID: _free_port(), REF_ID: _free_port()}
        gw_port, ports[FLOOR] = _free_port(), _free_port()
        env = {**os.environ, "REF_HOST": "127.0.0.1", "REF_PORT": str(ports[REF_ID])}
        children = [
            await asyncio.create_subprocess_exec(sys.executable, str(REF_SERVER), env=env, stdout=DEVNULL),
            await asyncio.create_subprocess_exec(sys.executable, __file__, "--upstream", str(ports[FAST_ID])),
            await asyncio.create_subprocess_exec(
                sys.executable, __file__, "--floor", str(ports[FLOOR]), str(ports[FAST_ID])
            ),
        ]
        try:
            nc = await nats.connect(nats_url)
            try:
                js = nc.jetstream()
                await ensure_resources(js)
                _say("seeding the catalog")
                await _seed(js, {FAST_ID: ports[FAST_ID], REF_ID: ports[REF_ID]})
            finally:
                await nc.close()
            _say("starting the gateway")
            children.append(
                await asyncio.create_subprocess_exec(sys.executable, __file__, "--gateway", nats_url, str(gw_port))
            )
            gw = f"http://127.0.0.1:{gw_port}"
            connector = aiohttp.TCPConnector(limit=0)
            async with aiohttp.ClientSession(connector=connector) as session:
                for service_id in (FAST_ID, REF_ID):
                    await _wait_ok(session, f"http://127.0.0.1:{ports[service_id]}/v1/")
                    await _wait_ok(session, f"{gw}/proxy/{service_id}/v1/")
                await _wait_ok(session, f"http://127.0.0.1:{ports[FLOOR]}/floor/v1/")
                await _measure(session, gw, nats_url, ports, quick, results)
        finally:
            for child in children:
                child.terminate()
                await child.wait()
            await server.stop()
    return results


def _row(name: str, samples: list[float]) -> str:
    return (
        f"| {name} | {len(samples)} | {_ms(statistics.median(samples))} | "
        f"{_ms(_percentile(samples, 0.99))} | {_ms(statistics.fmean(samples))} |"
    )


def report(r: Results) -> str:
    lines = ["## Machine", ""] + [f"- {k}: {v}" for k, v in _machine().items()]
    lines += ["", "## Proxy vs direct (serial requests on keep-alive connections; ms)", ""]
    lines += ["| request | n | p50 | p99 | mean |", "|---|---:|---:|---:|---:|"]
    lines += [_row(name, samples) for name, samples in r.latency.items()]
    lines += ["", "Added by the gateway (the same request through premd minus straight to the service; ms):", ""]
    lines += ["| request | added p50 | added p99 |", "|---|---:|---:|"]
    for name in r.latency:
        if " via " not in name:
            continue
        base = r.latency[name.split(" via ")[0] + " direct"]  # "GET /v1/ via X" -> "GET /v1/ direct"
        via = r.latency[name]
        added_50 = statistics.median(via) - statistics.median(base)
        added_99 = _percentile(via, 0.99) - _percentile(base, 0.99)
        lines.append(f"| {name} | {_ms(added_50)} | {_ms(added_99)} |")
    lines += ["", f"## Throughput ({CONCURRENCY} concurrent requests from one client process)", ""]
    lines += ["| request | req/s |", "|---|---:|"]
    lines += [f"| {name} | {value:,.0f} |" for name, value in r.throughput.items()]
    size = f"{r.list_bytes / 1e6:.1f} MB"
    lines += ["", f"## GET /v1/services/ with {r.listed} services ({size} of JSON; ms, client-side)", ""]
    lines += ["| case | n | p50 | p99 | mean |", "|---|---:|---:|---:|---:|"]
    lines.append(_row("steady (the encoded list is kept)", r.steady))
    lines.append(_row("first request after a state change (list rebuilt)", r.rebuilt))
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer samples (a smoke run)")
    parser.add_argument("--gateway", nargs=2, metavar=("NATS_URL", "PORT"), help=argparse.SUPPRESS)
    parser.add_argument("--upstream", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--floor", nargs=2, type=int, metavar=("PORT", "UPSTREAM"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.gateway:
        if os.environ.get("BENCH_UVLOOP") == "1":
            import uvloop

            uvloop.install()
        asyncio.run(_serve_gateway(args.gateway[0], int(args.gateway[1])))
        return
    if args.upstream:
        asyncio.run(_serve_upstream(args.upstream))
        return
    if args.floor:
        asyncio.run(_serve_floor(*args.floor))
        return
    text = report(asyncio.run(run(args.quick)))
    print(text)
    if not args.quick:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text("# Gateway benchmark (bench/bench_gateway.py)\n\n" + text)


if __name__ == "__main__":
    main()
