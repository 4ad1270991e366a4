"""``premd serve`` as a user starts it: exec to a healthy ``GET /v1/`` and to ``/readyz`` on a warm data
directory, its memory, and the gateway's latency while registry_sync validates a 10,000-manifest registry.

The catalog is a registry file of 1,000 manifests (the real registry's, under new ids); the data directory
is warmed by one start first. premd runs as an installed premd does: its modules' compiled bytecode is
cached (pip compiles a wheel at install; here ``PYTHONPYCACHEPREFIX`` in the run's directory, filled by
the warm-up start, with ``PYTHONDONTWRITEBYTECODE`` removed from premd's environment).

Memory is premd's processes: the supervisor and its four component processes (the embedded nats-server,
a Go process, is reported apart), read from /proc once the list shows every service and premd has been
idle for a second. RSS counts the interpreter's shared pages once per process; PSS splits them.

The loop: ``GET /v1/`` (answered by the gateway itself) sampled back to back, with a 10,000-manifest
registry file added and refreshed every second; "idle" while the file stays the same, "busy" while it
changes before each refresh (registry_sync reads and validates all of it, about a second of CPU, in its
own process; one catalog entry changes), interleaved.
"""

from __future__ import annotations

import asyncio
import json
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
BIG_REGISTRY = 10_000
DEADLINE_S = 120.0
NATS = b"nats-server"


def _status(pid: int, field: str, name: str = "status") -> int:
    for line in Path(f"/proc/{pid}/{name}").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} for {pid}")


def rss_bytes(pid: int) -> int:
    return _status(pid, "VmRSS")


def pss_bytes(pid: int) -> int:
    return _status(pid, "Pss", "smaps_rollup")


def tree(pid: int) -> dict[int, bytes]:
    """``pid`` and its children: pid -> the command's first two words (``python -m gateway``)."""
    found = {pid: b"premd serve"}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found[int(entry.name)] = NATS if argv[0].endswith(NATS) else b" ".join(argv[1:3])
    return found


async def _until(url: str, deadline: float, proc: asyncio.subprocess.Process) -> None:
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if proc.returncode is not None:
                raise RuntimeError(f"premd serve exited with {proc.returncode}")
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


async def _start(env: dict[str, str]) -> tuple[asyncio.subprocess.Process, float, float]:
    """premd serve started: (process, seconds to a healthy GET /v1/, seconds to /readyz 200)."""
    base = f"http://127.0.0.1:{env['PREMD_PORT']}"
    start = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        PREMD, "serve", env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    await _until(f"{base}/v1/", time.monotonic() + DEADLINE_S, proc)
    healthy = time.perf_counter() - start
    await _until(f"{base}/readyz", time.monotonic() + DEADLINE_S, proc)
    return proc, healthy, time.perf_counter() - start


async def _stop(proc: asyncio.subprocess.Process) -> None:
    proc.send_signal(signal.SIGTERM)
    await proc.wait()


def _figure(figures: dict[str, Figure], key: str, title: str, unit: str, goal: str = "") -> Figure:
    return figures.setdefault(key, Figure(key, title, unit=unit, goal=goal))


async def _memory(pid: int) -> dict[str, float]:
    procs = tree(pid)
    premd = [p for p, name in procs.items() if name != NATS]
    nats = [p for p, name in procs.items() if name == NATS]
    gateway = [p for p, name in procs.items() if name == b"-m gateway"]
    return {
        "serve.rss": float(sum(rss_bytes(p) for p in premd)),
        "serve.pss": float(sum(pss_bytes(p) for p in premd)),
        "serve.rss.gateway": float(sum(rss_bytes(p) for p in gateway)),
        "serve.rss.nats": float(sum(rss_bytes(p) for p in nats)),
        "processes": float(len(premd)),
    }


async def _latencies(session: aiohttp.ClientSession, url: str, seconds: float) -> list[float]:
    out: list[float] = []
    end = time.perf_counter() + seconds
    while (now := time.perf_counter()) < end:
        async with session.get(url) as resp:
            await resp.read()
        out.append(time.perf_counter() - now)
    return out


async def _loop(figures: dict[str, Figure], env: dict[str, str], tmp: Path, quick: bool, reps: int) -> None:
    """GET /v1/ idle and while registry_sync validates a 10,000-manifest registry every second."""
    # Two versions of the document, written before measuring (encoding 8 MB here would stall this client):
    # each change swaps one in by a rename, and registry_sync reads, validates and diffs all of it.
    manifests = json.loads(generate(BIG_REGISTRY, documentation=True))
    versions = []
    for n in range(2):
        manifests[0]["description"] = f"bench version {n}"
        version = tmp / f"big.{n}.json"
        version.write_text(json.dumps(manifests))
        versions.append(version)
    big = tmp / "big.json"
    _swap_in(versions[0], big)
    env = dict(env, PREMD_REGISTRY_REFRESH_S="1", PREM_REGISTRY_URL=f"{env['PREM_REGISTRY_URL']} {big.as_uri()}")
    proc, _, _ = await _start(env)
    base = f"http://127.0.0.1:{env['PREMD_PORT']}"
    idle: list[list[float]] = []
    busy: list[list[float]] = []
    try:
        async with aiohttp.ClientSession() as session:
            # Its ids include the 1,000 of the first registry (bench.registry.generate): 10,000 services in all.
            await _listed(f"{base}/v1/services/", BIG_REGISTRY, time.monotonic() + DEADLINE_S)
            seconds = 3.0 if quick else 8.0
            for _ in range(reps if quick else 2 * reps):
                await asyncio.sleep(2.0)  # the last change's refresh is over: unchanged refreshes only
                idle.append(await _latencies(session, f"{base}/v1/", seconds))
                changing = asyncio.create_task(_change_every_second(versions, big))
                try:
                    busy.append(await _latencies(session, f"{base}/v1/", seconds))
                finally:
                    changing.cancel()
    finally:
        await _stop(proc)
    title = f"premd serve: GET /v1/ at {BIG_REGISTRY:,} services"
    quiet = _figure(figures, "serve.loop.idle", f"{title}, registry unchanged", "ms")
    loaded = _figure(figures, "serve.loop.busy", f"{title}, {BIG_REGISTRY:,} manifests validated every second", "ms")
    loaded.baseline = "serve.loop.idle"
    loaded.goal = "p99 within 1 ms of idle"
    for run in idle:
        quiet.add_run(run)
    for run in busy:
        loaded.add_run(run)


def _swap_in(version: Path, big: Path) -> None:
    staged = big.with_suffix(".staged")
    staged.unlink(missing_ok=True)
    os.link(version, staged)
    os.replace(staged, big)


async def _change_every_second(versions: list[Path], big: Path) -> None:
    n = 0
    while True:
        n += 1
        _swap_in(versions[n % 2], big)
        await asyncio.sleep(1.0)


async def run(figures: dict[str, Figure], progress: Progress, quick: bool, reps: int) -> None:
    progress.step(f"premd serve: start-up, memory and its loop with {SERVICES:,} services")
    with tempfile.TemporaryDirectory(prefix="premd-bench-serve-") as name:
        tmp = Path(name)
        registry = tmp / "registry.json"
        registry.write_bytes(generate(SERVICES, documentation=True))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PREMD_", "PREM_"))}
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env.update(
            PREMD_DATA_DIR=str(tmp / "data"),
            PREMD_PORT=str(free_port()),
            PREMD_NATS_PORT=str(free_port()),
            PREM_REGISTRY_URL=registry.as_uri(),
            PREMD_LOG_LEVEL="WARNING",
            PYTHONPYCACHEPREFIX=str(tmp / "pycache"),
        )
        proc, _, _ = await _start(env)  # cold: creates the data directory, the streams and the bytecode cache
        await _listed(f"http://127.0.0.1:{env['PREMD_PORT']}/v1/services/", SERVICES, time.monotonic() + DEADLINE_S)
        await _stop(proc)
        runs: list[dict[str, list[float]]] = []  # per repetition: 1 start (quick) or 3
        for _ in range(reps):
            run_: dict[str, list[float]] = {}
            for _ in range(1 if quick else 3):
                proc, to_health, to_ready = await _start(env)
                base = f"http://127.0.0.1:{env['PREMD_PORT']}"
                await _listed(f"{base}/v1/services/", SERVICES, time.monotonic() + DEADLINE_S)
                await asyncio.sleep(1.0)  # idle, as the figure says
                measured = {"serve.startup": to_health, "serve.ready": to_ready, **await _memory(proc.pid)}
                for key, value in measured.items():
                    run_.setdefault(key, []).append(value)
                await _stop(proc)
            runs.append(run_)
    count = int(runs[0]["processes"][0])
    idle = f"idle, {SERVICES:,} services"
    kinds = {
        "serve.startup": ("premd serve: exec to healthy GET /v1/ (warm data dir)", "s", "under 1 s"),
        "serve.ready": ("premd serve: exec to /readyz 200, every component (warm data dir)", "s", ""),
        "serve.rss": (f"premd serve RSS, {idle}: sum of its {count} processes", "bytes", "under 80 MB"),
        "serve.pss": (f"premd serve PSS, {idle}: sum of its {count} processes", "bytes", ""),
        "serve.rss.gateway": (f"premd serve RSS, {idle}: the gateway's process", "bytes", ""),
        "serve.rss.nats": (f"premd serve RSS, {idle}: the embedded nats-server", "bytes", ""),
    }
    for key, (title, unit, goal) in kinds.items():
        figure = _figure(figures, key, title, unit, goal)
        for run_ in runs:
            figure.add_run(run_[key])
    progress.say("premd serve: GET /v1/ while registry_sync validates 10,000 manifests")
    with tempfile.TemporaryDirectory(prefix="premd-bench-serve-loop-") as name:
        loop_env = dict(env, PREMD_DATA_DIR=str(Path(name) / "data"), PYTHONPYCACHEPREFIX=str(Path(name) / "pycache"))
        await _loop(figures, loop_env, Path(name), quick, reps)
