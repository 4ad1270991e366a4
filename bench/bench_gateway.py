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
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import msgspec
import nats
from aiohttp import web

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
SERVICE_ID = "bench-ref"
CATALOG_SIZE = 1000
DEADLINE_S = 20.0


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
    runner = web.AppRunner(create_app(settings, nc), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
        await nc.close()


# ---------------------------------------------------------------- fixtures of the run


def _catalog() -> list[CatalogEntry]:
    """1,000 services made from the real registry's manifests (distinct ids)."""
    raw = json.loads(BUNDLED.read_text())
    entries = [CatalogEntry(manifest=Manifest(id=SERVICE_ID, name="bench", interfaces=["chat"]), origin="bench")]
    i = 0
    while len(entries) < CATALOG_SIZE:
        item = dict(raw[i % len(raw)])
        item["id"] = f"{item['id']}-{i}"
        entries.append(CatalogEntry(manifest=msgspec.convert(item, Manifest), origin="https://registry.example/x.json"))
        i += 1
    return entries


async def _seed(js: nats.js.JetStreamContext, ref_port: int) -> None:
    catalog = await kv_bucket(js, subjects.KV_CATALOG)
    entries = _catalog()
    for entry in entries:
        await catalog.put(subjects.catalog_key(entry.manifest.id), msgspec.json.encode(entry))
    meta = CatalogMeta(generation=1, order=[e.manifest.id for e in entries], registries=[], updated_at=time.time())
    await catalog.put(subjects.CATALOG_META_KEY, msgspec.json.encode(meta))
    observed = await kv_bucket(js, subjects.KV_OBSERVED)
    state = ServiceState(service_id=SERVICE_ID, phase="ready", running=True, ready=True, host_port=ref_port)
    await observed.put(SERVICE_ID, msgspec.json.encode(state))


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
    session: aiohttp.ClientSession, gw: str, js: nats.js.JetStreamContext, ref_port: int, rounds: int
) -> list[float]:
    """Latency of the first listing that shows a state change (the gateway rebuilds the list for it)."""
    observed = await kv_bucket(js, subjects.KV_OBSERVED)
    url = f"{gw}/v1/services/"
    async with session.get(url) as resp:
        previous = await resp.read()
    samples: list[float] = []
    for i in range(rounds):
        state = ServiceState(
            service_id=SERVICE_ID, phase="ready", running=True, ready=True, host_port=ref_port, restarts=i + 1
        )
        await observed.put(SERVICE_ID, msgspec.json.encode(state))
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


async def run(quick: bool) -> str:
    serial_total = 400 if quick else 3000
    tput_s = 1.0 if quick else 4.0
    with tempfile.TemporaryDirectory(prefix="premd-bench-") as tmp:
        server = EmbeddedNats(Path(tmp) / "nats", port=0)
        nats_url = await server.start()
        ref_port, gw_port = _free_port(), _free_port()
        env = {**os.environ, "REF_HOST": "127.0.0.1", "REF_PORT": str(ref_port)}
        ref = await asyncio.create_subprocess_exec(
            sys.executable, str(REF_SERVER), env=env, stdout=asyncio.subprocess.DEVNULL
        )
        nc = await nats.connect(nats_url)
        gw_proc: asyncio.subprocess.Process | None = None
        try:
            js = nc.jetstream()
            await ensure_resources(js)
            await _seed(js, ref_port)
            gw_proc = await asyncio.create_subprocess_exec(
                sys.executable, __file__, "--gateway", nats_url, str(gw_port), cwd=str(ROOT)
            )
            direct, gw = f"http://127.0.0.1:{ref_port}", f"http://127.0.0.1:{gw_port}"
            connector = aiohttp.TCPConnector(limit=0)
            async with aiohttp.ClientSession(connector=connector) as session:
                await _wait_ok(session, f"{direct}/v1/")
                await _wait_ok(session, f"{gw}/proxy/{SERVICE_ID}/v1/")
                proxied = f"{gw}/proxy/{SERVICE_ID}"
                embed = msgspec.json.encode({"model": SERVICE_ID, "input": "hello"})
                cases = {
                    "GET /v1/ direct": _get(session, f"{direct}/v1/"),
                    "GET /v1/ via /proxy": _get(session, f"{proxied}/v1/"),
                    "POST /v1/embeddings direct": _post(session, f"{direct}/v1/embeddings", embed),
                    "POST /v1/embeddings via /proxy": _post(session, f"{proxied}/v1/embeddings", embed),
                    "POST /v1/embeddings via OpenAI route": _post(session, f"{gw}/v1/embeddings", embed),
                }
                await _serial(cases, 100)  # warm-up: connections, caches
                latency = await _serial(cases, serial_total)
                tput = {
                    "GET /v1/ direct": await _throughput(cases["GET /v1/ direct"], 16, tput_s),
                    "GET /v1/ via /proxy": await _throughput(cases["GET /v1/ via /proxy"], 16, tput_s),
                }
                listing = _get(session, f"{gw}/v1/services/")
                async with session.get(f"{gw}/v1/services/") as resp:
                    count = len(await resp.json())
                steady = (await _serial({"list": listing}, 200 if quick else 1000))["list"]
                cold = await _listing_after_change(session, gw, js, ref_port, 10 if quick else 30)
        finally:
            if gw_proc is not None:
                gw_proc.terminate()
                await gw_proc.wait()
            ref.terminate()
            await ref.wait()
            await nc.close()
            await server.stop()
    return _report(latency, tput, count, steady, cold)


def _report(
    latency: dict[str, list[float]], tput: dict[str, float], count: int, steady: list[float], cold: list[float]
) -> str:
    lines = ["## Machine", ""] + [f"- {k}: {v}" for k, v in _machine().items()]
    lines += ["", "## Proxy vs direct (serial, keep-alive; ms)", ""]
    lines += ["| request | n | p50 | p99 | mean |", "|---|---:|---:|---:|---:|"]
    for name, samples in latency.items():
        lines.append(
            f"| {name} | {len(samples)} | {_ms(statistics.median(samples))} | "
            f"{_ms(_percentile(samples, 0.99))} | {_ms(statistics.fmean(samples))} |"
        )
    lines += ["", "Added by the gateway (same request, proxied minus direct):", ""]
    lines += ["| request | added p50 (ms) | added p99 (ms) |", "|---|---:|---:|"]
    for base, via in (
        ("GET /v1/ direct", "GET /v1/ via /proxy"),
        ("POST /v1/embeddings direct", "POST /v1/embeddings via /proxy"),
        ("POST /v1/embeddings direct", "POST /v1/embeddings via OpenAI route"),
    ):
        d, p = latency[base], latency[via]
        added_50 = statistics.median(p) - statistics.median(d)
        added_99 = _percentile(p, 0.99) - _percentile(d, 0.99)
        lines.append(f"| {via.split(' via ')[0]} via {via.split(' via ')[1]} | {_ms(added_50)} | {_ms(added_99)} |")
    lines += ["", "## Throughput (16 concurrent clients, one client process)", ""]
    lines += ["| request | req/s |", "|---|---:|"]
    lines += [f"| {name} | {value:,.0f} |" for name, value in tput.items()]
    lines += ["", f"## GET /v1/services/ with {count} services (ms)", ""]
    lines += ["| case | n | p50 | p99 | max |", "|---|---:|---:|---:|---:|"]
    for name, samples in (("steady (list kept encoded)", steady), ("first after a state change (rebuilt)", cold)):
        lines.append(
            f"| {name} | {len(samples)} | {_ms(statistics.median(samples))} | "
            f"{_ms(_percentile(samples, 0.99))} | {_ms(max(samples))} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer samples (a smoke run)")
    parser.add_argument("--gateway", nargs=2, metavar=("NATS_URL", "PORT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.gateway:
        asyncio.run(_serve_gateway(args.gateway[0], int(args.gateway[1])))
        return
    report = asyncio.run(run(args.quick))
    print(report)
    if not args.quick:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text("# Gateway benchmark (bench/bench_gateway.py)\n\n" + report)


if __name__ == "__main__":
    main()
