"""A service's lifecycle on the Docker engine: the image download, and a Docker event's way to an SSE client.

- Download: an image with a layer of its own (incompressible bytes, so the bytes are really moved) in the
  test bed's OCI registry on loopback. premd: ``PullImage`` over NATS to a scheduler process until the pull's
  "succeeded" event; baseline: ``docker pull`` of the same reference. Interleaved; the image is deleted from
  the engine before each (and premd's observed state shows it gone before premd is asked again).
- Fan-out: a running premd service's container is killed. Baseline: the "die" event reaching a plain
  aiodocker events subscriber; premd: the scheduler's "state" event (the crash) reaching an SSE client of
  the gateway's ``/v1/events?service=<id>`` (Docker event -> scheduler pass -> JetStream -> gateway -> client).
  What it showed first: the pass the "die" event starts often still listed the container as running (the
  engine's list lags its "die" event), so the crash waited for the next event or the 10 s relist; the
  scheduler now inspects a container Docker said died (docs/performance.md).

Part of ``python -m bench`` (suite ``lifecycle``). Needs the Docker engine and the test bed's images.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiodocker
import msgspec
import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from bench.core import ROOT, Figure, Progress, free_port, spawn, stop_all, wait_ok
from bench.scheduler import _put_catalog, _wait_downloaded
from common import bus, codec, subjects
from common.embedded_nats import EmbeddedNats
from common.errors import AppError
from common.jetstream import kv_bucket, kv_get
from common.manifest import Manifest
from common.messages import (
    OperationAccepted,
    OperationEvent,
    PullImage,
    ServiceState,
    ServiceStopped,
    StartService,
    StopService,
)
from tests.testbed.base_image import BASE_IMAGE, ensure_base_image
from tests.testbed.images import REF_IMAGE, REF_PORT, build_image, ensure_ref_image
from tests.testbed.oci_registry import start_registry

DEADLINE_S = 120.0
LAYER_BYTES = 64 * 1024 * 1024


def _fig(figures: dict[str, Figure], key: str, title: str, **kw: object) -> Figure:
    if key not in figures:
        figures[key] = Figure(key, title, **kw)  # type: ignore[arg-type]
    return figures[key]


def _reps(samples: list[float], reps: int) -> list[list[float]]:
    """The samples, taken in turn, as ``reps`` repetitions (the spread is over their medians)."""
    size = max(1, len(samples) // max(1, reps))
    return [samples[i : i + size] for i in range(0, len(samples), size)]


def _env(nats_url: str, data_dir: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREMD_", "PREM_"))}
    env.update(PREMD_NATS_URL=nats_url, PREMD_LOG_LEVEL="WARNING", PREMD_DATA_DIR=data_dir)
    return env


async def run(figures: dict[str, Figure], progress: Progress, quick: bool, reps: int) -> None:
    with tempfile.TemporaryDirectory(prefix="premd-bench-life-") as tmp:
        server = EmbeddedNats(str(Path(tmp) / "nats"), port=0)
        nats_url = await server.start()
        scheduler = None
        try:
            nc = await nats.connect(nats_url)
            scheduler = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "scheduler",
                env=_env(nats_url, str(Path(tmp) / "data")),
                cwd=ROOT,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
            async with aiodocker.Docker() as docker:
                await _download(figures, progress, nc, docker, Path(tmp), quick, reps)
                await _fan_out(figures, progress, nc, docker, nats_url, quick, reps)
            await nc.close()
        finally:
            if scheduler is not None and scheduler.returncode is None:
                scheduler.terminate()
                await scheduler.wait()
            await server.stop()


# ---------------------------------------------------------------- download vs docker pull


async def _image_gone(docker: aiodocker.Docker, ref: str) -> None:
    try:
        await docker.images.delete(ref, force=True)
    except aiodocker.DockerError as exc:
        if exc.status != 404:
            raise


async def _not_downloaded(nc: NATS, service_id: str) -> None:
    """Until premd's observed state shows the image gone (else a pull would answer "already there")."""
    kv = await kv_bucket(nc.jetstream(), subjects.KV_OBSERVED)
    async with asyncio.timeout(DEADLINE_S):
        while True:
            state, _ = await kv_get(kv, service_id, ServiceState)
            if state is None or not state.downloaded:
                return
            await asyncio.sleep(0.05)  # poll interval


async def _premd_pull(nc: NATS, service_id: str) -> float:
    done: asyncio.Future[OperationEvent] = asyncio.get_running_loop().create_future()

    async def on_event(msg: Msg) -> None:
        event = codec.decode(msg.data, OperationEvent)
        if event.kind == "pull" and event.type in ("succeeded", "failed") and not done.done():
            done.set_result(event)

    sub = await nc.subscribe(subjects.service_events_filter(service_id), cb=on_event)
    await nc.flush()
    try:
        deadline = time.monotonic() + DEADLINE_S
        while True:
            t0 = time.perf_counter()
            try:
                await bus.request(nc, subjects.SCHEDULER_PULL, PullImage(service_id=service_id), OperationAccepted, 10)
                break
            except AppError:  # the scheduler's catalog view has not got the service yet (first pull only)
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)  # poll interval
        async with asyncio.timeout(DEADLINE_S):
            event = await done
        elapsed = time.perf_counter() - t0
    finally:
        await sub.unsubscribe()
    if event.type != "succeeded":
        raise RuntimeError(f"premd pull failed: {event.message or event.status}")
    return elapsed


async def _docker_pull(ref: str) -> float:
    t0 = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        "docker", "pull", "--quiet", ref, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    _, err = await proc.communicate()
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"docker pull {ref}: {err.decode(errors='replace').strip()}")
    return elapsed


async def _download(
    figures: dict[str, Figure],
    progress: Progress,
    nc: NATS,
    docker: aiodocker.Docker,
    tmp: Path,
    quick: bool,
    reps: int,
) -> None:
    runs = 2 if quick else 3 * reps
    progress.step(f"image download: premd vs docker pull, {runs} each, {LAYER_BYTES >> 20} MiB layer")
    registry = start_registry(tmp / "registry")
    local = f"premd-bench/layer-{uuid.uuid4().hex[:8]}:1"
    remote = ""
    try:
        await build_image(
            docker, local, {"Dockerfile": b"FROM scratch\nCOPY blob /blob\n", "blob": os.urandom(LAYER_BYTES)}
        )
        remote = await registry.push(docker, local)
        await _image_gone(docker, local)
        await _image_gone(docker, remote)
        service_id = f"bench-pull-{uuid.uuid4().hex[:6]}"
        raw = {
            "id": service_id,
            "name": "Bench pull",
            "interfaces": ["chat"],
            "dockerImages": {"cpu": {"image": remote, "size": LAYER_BYTES}},
            "defaultPort": 8000,
            "defaultExternalPort": free_port(),
        }
        await _put_catalog(nc, msgspec.convert(raw, Manifest))
        premd: list[float] = []
        plain: list[float] = []
        for i in range(runs + 1):  # the first pair warms up (registry's page cache, first connections)
            await _not_downloaded(nc, service_id)
            p = await _premd_pull(nc, service_id)
            await _image_gone(docker, remote)
            d = await _docker_pull(remote)
            await _image_gone(docker, remote)
            if i:
                premd.append(p)
                plain.append(d)
    finally:
        if remote:
            await _image_gone(docker, remote)
        await _image_gone(docker, local)
        registry.close()
    size = f"{LAYER_BYTES >> 20} MiB layer from the local OCI registry"
    for chunk in _reps(plain, reps):
        _fig(figures, "lifecycle.pull.plain", f"image download: docker pull, {size}", unit="s").add_run(chunk)
    pull = _fig(
        figures,
        "lifecycle.pull.premd",
        f"image download: premd PullImage to its succeeded event, {size}",
        unit="s",
        baseline="lifecycle.pull.plain",
        goal="within 5% of docker pull",
    )
    for chunk in _reps(premd, reps):
        pull.add_run(chunk)


# ---------------------------------------------------------------- a Docker event to an SSE client


class _SseWatch:
    """``GET /v1/events?service=<id>``: the arrival time of each frame naming ``event: state``."""

    def __init__(self) -> None:
        self.connected = asyncio.Event()
        self.states: asyncio.Queue[float] = asyncio.Queue()

    async def run(self, port: int, service_id: str) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(f"GET /v1/events?service={service_id} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"/v1/events answered {head[:40]!r}")
            self.connected.set()
            while data := await reader.read(65536):
                at = time.perf_counter()
                for _ in range(data.count(b"\nevent: state\n")):
                    self.states.put_nowait(at)
        finally:
            writer.close()


async def _docker_die(docker: aiodocker.Docker, ready: asyncio.Event, dies: asyncio.Queue[tuple[str, float]]) -> None:
    subscriber = docker.events.subscribe(filters={"type": ["container"], "event": ["die"]})  # type: ignore[no-untyped-call]
    ready.set()
    while True:
        item: dict[str, Any] | None = await subscriber.get()
        if item is None:
            return
        dies.put_nowait((str((item.get("Actor") or {}).get("ID") or item.get("id") or ""), time.perf_counter()))


async def _fan_out(
    figures: dict[str, Figure],
    progress: Progress,
    nc: NATS,
    docker: aiodocker.Docker,
    nats_url: str,
    quick: bool,
    reps: int,
) -> None:
    runs = 2 if quick else 3 * reps
    progress.step(f"a Docker event to an SSE client, {runs} container deaths")
    image = await ensure_ref_image(docker, REF_IMAGE, ensure_base_image(BASE_IMAGE))
    service_id = f"bench-evt-{uuid.uuid4().hex[:6]}"
    raw = {
        "id": service_id,
        "name": "Bench events",
        "interfaces": ["chat"],
        "dockerImages": {"cpu": {"image": image, "size": 1}},
        "defaultPort": REF_PORT,
        "defaultExternalPort": free_port(),
    }
    await _put_catalog(nc, msgspec.convert(raw, Manifest))
    await _wait_downloaded(nc, service_id)
    port = free_port()
    gateway = await spawn("-m", "bench.gateway", "--gateway", nats_url, str(port), "--front", "--uvloop")
    watch = _SseWatch()
    dies: asyncio.Queue[tuple[str, float]] = asyncio.Queue()
    subscribed = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []
    premd: list[float] = []
    plain: list[float] = []
    kv = await kv_bucket(nc.jetstream(), subjects.KV_OBSERVED)
    try:
        await wait_ok(f"http://127.0.0.1:{port}/v1/")
        tasks.append(asyncio.create_task(watch.run(port, service_id)))
        tasks.append(asyncio.create_task(_docker_die(docker, subscribed, dies)))
        async with asyncio.timeout(30):
            await watch.connected.wait()
            await subscribed.wait()
        started: asyncio.Queue[OperationEvent] = asyncio.Queue()

        async def on_event(msg: Msg) -> None:
            event = codec.decode(msg.data, OperationEvent)
            if event.kind == "start" and event.type in ("succeeded", "failed"):
                started.put_nowait(event)

        sub = await nc.subscribe(subjects.service_events_filter(service_id), cb=on_event)
        for _ in range(runs):
            await bus.request(nc, subjects.SCHEDULER_START, StartService(service_id=service_id), OperationAccepted, 30)
            # The start operation over (its last event), not only the service ready: while an operation owns a
            # service the scheduler's passes leave it alone, so a death in that window waits for the next relist.
            async with asyncio.timeout(DEADLINE_S):
                outcome = await started.get()
                if outcome.type != "succeeded":
                    raise RuntimeError(f"premd could not start the service: {outcome.message or outcome.status}")
                while True:
                    state, _ = await kv_get(kv, service_id, ServiceState)
                    if state is not None and state.ready and state.container_id:
                        break
                    await asyncio.sleep(0.05)  # poll interval
            while not watch.states.empty():
                watch.states.get_nowait()  # the start's own state events
            container = state.container_id
            t0 = time.perf_counter()
            await docker.containers.container(container).kill()
            async with asyncio.timeout(DEADLINE_S):
                while True:
                    dead, at = await dies.get()
                    if dead == container:
                        plain.append(at - t0)
                        break
                premd.append(await watch.states.get() - t0)
            await bus.request(nc, subjects.SCHEDULER_STOP, StopService(service_id=service_id), ServiceStopped, 30)
        await sub.unsubscribe()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await stop_all([gateway])
    docker_event = _fig(
        figures, "events.docker", "container kill -> its die event at a plain aiodocker events subscriber"
    )
    sse_event = _fig(
        figures,
        "events.sse",
        "container kill -> premd's state event at an SSE client of /v1/events",
        baseline="events.docker",
    )
    for a, b in zip(_reps(plain, reps), _reps(premd, reps), strict=True):
        docker_event.add_run(a)
        sse_event.add_run(b)
