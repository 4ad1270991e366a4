"""Scheduler test helpers: manifests in the catalog KV, the scheduler in-process, events and state with deadlines."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiodocker
import msgspec
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy

from common import bus, subjects
from common.jetstream import kv_bucket, kv_get
from common.manifest import Manifest
from common.messages import (
    CatalogEntry,
    CatalogMeta,
    GpuInfo,
    OperationAccepted,
    OperationEvent,
    ServiceState,
    StartService,
)
from common.settings import Settings
from scheduler.component import Scheduler
from tests.support.bus_users import connect_as
from tests.testbed.images import REF_PORT
from tests.testbed.util import StopWaiting, wait_until

DEADLINE_S = 30.0


def new_service_id(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def ref_manifest(service_id: str, image: str, **fields: Any) -> Manifest:
    """A reference-service manifest (camelCase keys in ``fields`` as a registry writes them)."""
    raw: dict[str, Any] = {
        "id": service_id,
        "name": f"Ref {service_id}",
        "interfaces": ["chat"],
        "modelInfo": {"memoryRequirements": 64},
        "dockerImages": {"cpu": {"image": image, "size": 200_000_000}},
        "defaultPort": REF_PORT,
        "defaultExternalPort": 18000,
        "volumePath": "/data",
    }
    raw.update(fields)
    return msgspec.convert(raw, Manifest)


async def put_catalog(js: JetStreamContext, *manifests: Manifest) -> None:
    """Write services to KV_CATALOG as registry_sync would (entries first, then the meta that orders them)."""
    kv = await kv_bucket(js, subjects.KV_CATALOG)
    meta, _ = await kv_get(kv, subjects.CATALOG_META_KEY, CatalogMeta)
    order = list(meta.order) if meta is not None else []
    for manifest in manifests:
        entry = CatalogEntry(manifest=manifest, origin="test")
        await kv.put(subjects.catalog_key(manifest.id), msgspec.json.encode(entry))
        if manifest.id not in order:
            order.append(manifest.id)
    generation = (meta.generation if meta is not None else 0) + 1
    new_meta = CatalogMeta(generation=generation, order=order, registries=[], updated_at=time.time())
    await kv.put(subjects.CATALOG_META_KEY, msgspec.json.encode(new_meta))


class FakeGpus:
    """An injectable GPU inventory (there is no GPU on the test machines)."""

    def __init__(self, gpus: list[GpuInfo]) -> None:
        self.gpus = gpus

    def list(self) -> list[GpuInfo]:
        return list(self.gpus)


@asynccontextmanager
async def running_scheduler(
    settings: Settings, gpu_probe: FakeGpus | None = None, *, embedded: bool = False
) -> AsyncIterator[Scheduler]:
    """The scheduler component in this process on its own connection; stopped (not its containers) after.

    ``embedded``: the scheduler's settings name no NATS URL, as under ``premd serve`` with its embedded
    nats-server (its home is then its data dir)."""
    nc = await connect_as(settings, subjects.SCHEDULER)
    own = msgspec.structs.replace(settings, nats_url=None) if embedded else settings
    scheduler = Scheduler(own, nc, gpu_probe=gpu_probe)
    await scheduler.start()
    await nc.flush()  # its subscriptions are on the server before the test's first request
    try:
        yield scheduler
    finally:
        await scheduler.stop()
        await nc.close()


class Events:
    """Every event of one service (or operation) from the PREMD_EVENTS stream, from the beginning."""

    def __init__(self, sub: JetStreamContext.PushSubscription) -> None:
        self._sub = sub
        self.seen: list[OperationEvent] = []

    @classmethod
    async def of_service(cls, js: JetStreamContext, service_id: str) -> Events:
        sub = await js.subscribe(
            subjects.service_events_filter(service_id), ordered_consumer=True, deliver_policy=DeliverPolicy.ALL
        )
        return cls(sub)

    async def next(self, timeout: float = DEADLINE_S) -> OperationEvent:
        msg = await self._sub.next_msg(timeout=timeout)
        event = msgspec.json.decode(msg.data, type=OperationEvent)
        self.seen.append(event)
        return event

    async def until(self, predicate: Callable[[OperationEvent], bool], timeout: float = DEADLINE_S) -> OperationEvent:
        """The first event (from now) matching ``predicate``; all events read on the way are in ``seen``."""
        async with asyncio.timeout(timeout):
            while True:
                event = await self.next(timeout=timeout)
                if predicate(event):
                    return event

    async def final(self, operation_id: str, timeout: float = DEADLINE_S) -> OperationEvent:
        return await self.until(lambda e: e.operation_id == operation_id and e.type in ("succeeded", "failed"), timeout)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self._sub.unsubscribe()


async def start_and_wait(nc: NATS, js: JetStreamContext, service_id: str) -> OperationEvent:
    """Start ``service_id`` on the running scheduler; the final event (succeeded or failed) of its operation."""
    events = await Events.of_service(js, service_id)
    try:
        command = StartService(service_id=service_id)
        accepted = await bus.request(nc, subjects.SCHEDULER_START, command, OperationAccepted, 5)
        return await events.final(accepted.operation_id)
    finally:
        await events.close()


async def observed(js: JetStreamContext, service_id: str) -> ServiceState | None:
    kv = await kv_bucket(js, subjects.KV_OBSERVED)
    state, _ = await kv_get(kv, service_id, ServiceState)
    return state


async def wait_observed(
    js: JetStreamContext, service_id: str, predicate: Callable[[ServiceState], bool], timeout: float = DEADLINE_S
) -> ServiceState:
    """Poll KV_OBSERVED until the service's state satisfies ``predicate`` (TimeoutError with the last state)."""
    state: ServiceState | None = None

    async def reached() -> bool:
        nonlocal state
        state = await observed(js, service_id)
        return state is not None and predicate(state)

    try:
        await wait_until(reached, deadline_s=timeout, interval=0.05, what=f"{service_id}: state")
    except TimeoutError:
        raise TimeoutError(f"{service_id}: state not reached within {timeout} s; last: {state}") from None
    assert state is not None
    return state


async def containers_of(docker: aiodocker.Docker, service_id: str) -> list[dict[str, Any]]:
    """Containers labelled for the service or named after it (raw listing dicts)."""
    found: list[dict[str, Any]] = []
    for c in await docker.containers.list(all=True):
        raw: dict[str, Any] = c._container
        labels = raw.get("Labels") or {}
        names = [n.lstrip("/") for n in raw.get("Names") or []]
        if labels.get("io.premd.service") == service_id or service_id in names:
            found.append(raw)
    return found


async def cleanup_service(docker: aiodocker.Docker, service_id: str) -> None:
    """Force-remove the service's containers and its volume (test teardown)."""
    for raw in await containers_of(docker, service_id):
        with contextlib.suppress(aiodocker.DockerError):
            await docker.containers.container(raw["Id"]).delete(force=True)
    with contextlib.suppress(aiodocker.DockerError):
        async with docker._query(f"volumes/prem-{service_id}-data", method="DELETE"):
            pass


@asynccontextmanager
async def service_id_maker(docker: aiodocker.Docker, prefix: str = "t") -> AsyncIterator[Callable[[], str]]:
    """Makes new unique service ids; their containers and volumes are removed at the end."""
    made: list[str] = []

    def make() -> str:
        made.append(new_service_id(prefix))
        return made[-1]

    try:
        yield make
    finally:
        for sid in made:
            await cleanup_service(docker, sid)


async def exec_output(docker: aiodocker.Docker, container_id: str, *cmd: str) -> str:
    """Run a command in a container and return its stdout."""
    ex = await docker.containers.container(container_id).exec(list(cmd), stdout=True, stderr=True)
    chunks: list[bytes] = []
    async with ex.start(detach=False) as stream:
        while (msg := await stream.read_out()) is not None:
            chunks.append(msg.data)
    return b"".join(chunks).decode()


class SchedulerProcess:
    """``python -m scheduler`` against the test's NATS, as premd runs it."""

    def __init__(self, nats_url: str, log: Path, credentials: str | Path) -> None:
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("PREMD_", "PREM_"))}
        self.env.update(PREMD_NATS_URL=nats_url, PREMD_RECONCILE_INTERVAL_S="2", PREMD_LOG_LEVEL="INFO")
        self.env.update(PREMD_NATS_CREDENTIALS=str(credentials))
        self.log = log
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self, nc: NATS) -> None:
        with self.log.open("ab") as out:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "scheduler", env=self.env, stdout=out, stderr=out
            )
        proc = self.proc

        async def serving() -> bool:  # once its info endpoint answers
            if proc.returncode is not None:
                raise StopWaiting(self.log.read_text()[-3000:])
            await nc.request(subjects.srv_info(subjects.SCHEDULER), b"", timeout=0.5)
            return True

        await wait_until(serving, deadline_s=30, what="the scheduler process serving")

    async def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(sig)
            async with asyncio.timeout(30):
                await self.proc.wait()
