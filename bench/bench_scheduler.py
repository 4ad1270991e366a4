"""Scheduler benchmark: create-to-ready of the reference service through premd vs plain aiodocker, side by side.

One run, interleaved so that drift hits both alike:
- premd: ``StartService`` over NATS to a scheduler process (``python -m scheduler``, as premd runs it) until
  its "succeeded" (ready) event; then ``StopService``.
- plain: aiodocker create + start of the same image with the same port binding, then ``GET /v1/`` polled
  every 10 ms until 200; then force-delete.
- acceptance: the time ``StartService`` takes to be answered (validated, fit-checked, desired state in KV).

Usage: ``.venv/bin/python bench/bench_scheduler.py [--runs N]``; writes bench/results/scheduler.md.
Needs the Docker engine and the reference image (built by the test bed when missing).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import bus, subjects  # noqa: E402
from common.embedded_nats import EmbeddedNats  # noqa: E402
from common.jetstream import ensure_resources, kv_bucket, kv_get  # noqa: E402
from common.manifest import Manifest  # noqa: E402
from common.messages import (  # noqa: E402
    CatalogEntry,
    CatalogMeta,
    OperationAccepted,
    OperationEvent,
    ServiceState,
    ServiceStopped,
    StartService,
    StopService,
)
from tests.testbed.base_image import BASE_IMAGE, ensure_base_image  # noqa: E402
from tests.testbed.images import REF_IMAGE, REF_PORT, ensure_ref_image  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "scheduler.md"
DEADLINE_S = 60.0
PLAIN_POLL_S = 0.01


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _machine(docker_version: str) -> list[tuple[str, str]]:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kib = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_kib = int(line.split()[1])
    except OSError:
        pass
    return [
        ("CPU", f"{cpu} x {os.cpu_count()}"),
        ("Memory", f"{mem_kib / 1024 / 1024:.1f} GiB"),
        ("Kernel", platform.release()),
        ("Python", platform.python_version()),
        ("Docker engine", docker_version),
    ]


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
    port = _free_port()
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


def _row(name: str, values: list[float]) -> str:
    ms = sorted(v * 1000 for v in values)
    p50 = statistics.median(ms)
    return f"| {name} | {len(ms)} | {p50:.1f} | {statistics.fmean(ms):.1f} | {ms[0]:.1f} | {ms[-1]:.1f} |"


async def main(runs: int) -> str:
    async with aiodocker.Docker() as docker:
        version = (await docker.version())["Version"]
        image = await ensure_ref_image(docker, REF_IMAGE, ensure_base_image(BASE_IMAGE))
    with tempfile.TemporaryDirectory(prefix="premd-bench-sched-") as tmp:
        server = EmbeddedNats(Path(tmp) / "nats", port=0)
        await server.start()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PREMD_", "PREM_"))}
        env.update(PREMD_NATS_URL=server.url, PREMD_LOG_LEVEL="WARNING")
        proc = None
        try:
            nc = await nats.connect(server.url)
            service_id = f"bench-{uuid.uuid4().hex[:8]}"
            raw = {
                "id": service_id,
                "name": "Bench",
                "interfaces": ["chat"],
                "dockerImages": {"cpu": {"image": image, "size": 1}},
                "defaultPort": REF_PORT,
                "defaultExternalPort": _free_port(),
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
            await server.stop()
    diff = statistics.median(premd) - statistics.median(plain)
    lines = [
        "# Scheduler benchmark",
        "",
        "Create-to-ready of the reference service (`premd-test/ref-service:1`, a stdlib HTTP server) through",
        "premd's scheduler (a separate `python -m scheduler` process, commands over NATS, ready = its",
        '"succeeded" event) vs a plain aiodocker create + start + `GET /v1/` every 10 ms, interleaved in one run.',
        "",
        "| machine | |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in _machine(version)],
        "",
        "| path | runs | p50 ms | mean ms | min ms | max ms |",
        "|---|---|---|---|---|---|",
        _row("premd start -> ready event", premd),
        _row("plain create + start + poll", plain),
        _row("premd start acceptance (reply)", accept),
        "",
        f"premd - plain (p50): {diff * 1000:+.1f} ms (aim: within 50 ms); "
        f"acceptance p50 {statistics.median(accept) * 1000:.2f} ms (aim: under 5 ms).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    report = asyncio.run(main(args.runs))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(report)
    print(report)
