"""``premd serve`` as a user starts it: exec to a healthy ``GET /v1/`` on a warm data directory, and its memory.

The catalog is a registry file of 1,000 manifests (the real registry's, under new ids); the data directory
is warmed by one start first. RSS is premd's own process (the embedded nats-server is a process of its own),
read from /proc once the list shows every service and the process has been idle for a second.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import msgspec

from bench.core import Figure, Progress, free_port
from bench.registry import generate

PREMD = shutil.which("premd") or str(Path(sys.executable).parent / "premd")
SERVICES = 1000
DEADLINE_S = 60.0


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


async def _healthy(url: str, deadline: float) -> None:
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            try:
                async with session.get(url) as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.01)  # poll interval: the figure is only as fine as this
    raise TimeoutError(f"{url} never answered")


async def _listed(url: str, count: int, deadline: float) -> None:
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            async with session.get(url) as resp:
                if resp.status == 200 and len(msgspec.json.decode(await resp.read())) >= count:
                    return
            await asyncio.sleep(0.1)  # poll interval
    raise TimeoutError("the catalog never filled")


async def _start(env: dict[str, str]) -> tuple[asyncio.subprocess.Process, float]:
    start = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        PREMD, "serve", env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    await _healthy(f"http://127.0.0.1:{env['PREMD_PORT']}/v1/", time.monotonic() + DEADLINE_S)
    return proc, time.perf_counter() - start


async def _stop(proc: asyncio.subprocess.Process) -> None:
    proc.send_signal(signal.SIGTERM)
    await proc.wait()


async def run(figures: dict[str, Figure], progress: Progress, quick: bool, reps: int) -> None:
    progress.step(f"premd serve: start-up and memory with {SERVICES:,} services")
    with tempfile.TemporaryDirectory(prefix="premd-bench-serve-") as tmp:
        registry = Path(tmp) / "registry.json"
        registry.write_bytes(generate(SERVICES, documentation=True))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PREMD_", "PREM_"))}
        env.update(
            PREMD_DATA_DIR=str(Path(tmp) / "data"),
            PREMD_PORT=str(free_port()),
            PREMD_NATS_PORT=str(free_port()),
            PREM_REGISTRY_URL=registry.as_uri(),
            PREMD_LOG_LEVEL="WARNING",
        )
        proc, _ = await _start(env)  # cold: creates the data directory and the streams
        await _listed(f"http://127.0.0.1:{env['PREMD_PORT']}/v1/services/", SERVICES, time.monotonic() + DEADLINE_S)
        await _stop(proc)
        startups: list[float] = []
        rss: list[float] = []
        for _ in range(reps if quick else 3 * reps):
            proc, elapsed = await _start(env)
            startups.append(elapsed)
            await _listed(f"http://127.0.0.1:{env['PREMD_PORT']}/v1/services/", SERVICES, time.monotonic() + DEADLINE_S)
            await asyncio.sleep(1.0)  # idle, as the figure says
            rss.append(float(rss_bytes(proc.pid)))
            await _stop(proc)
    figures.setdefault(
        "serve.startup",
        Figure("serve.startup", "premd serve: exec to healthy GET /v1/ (warm data dir)", unit="s", goal="under 1 s"),
    ).add_run(startups)
    figures.setdefault(
        "serve.rss",
        Figure("serve.rss", f"premd serve RSS, idle, {SERVICES:,} services", unit="bytes", goal="under 80 MB"),
    ).add_run(rss)
