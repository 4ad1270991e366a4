"""Service operations: start, restart, stop, and the readiness watch of an adopted container.

A command handler validates, checks fit, records desired state, registers the operation and replies;
the work runs in a task owned by the scheduler. One operation per service at a time: a second start
joins the one in flight; a stop cancels it. Observed state is written before the event announcing it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import msgspec

from common.catalog import CatalogView
from common.errors import AppError, Code, ConflictError, NotFoundError, error_for
from common.fit import check_memory, place_gpus, select_image
from common.manifest import ImageEntry, Manifest
from common.messages import (
    DesiredState,
    EventType,
    GpuInfo,
    GpuPlacement,
    HostFacts,
    OperationAccepted,
    OperationKind,
    ServiceStopped,
    StartService,
)
from common.settings import Settings
from scheduler.docker_driver import ContainerInfo, ContainerSpec, DockerDriver
from scheduler.events import EventPublisher, check_operation_id, new_operation_id
from scheduler.ports import PortAllocator
from scheduler.readiness import probe_http, probe_tcp, uses_http, wait_ready
from scheduler.reconcile import Backoff, owner
from scheduler.state import DesiredStore, ObservedStore, image_status, normalize_ref
from scheduler.tasks import TaskOwner

logger = logging.getLogger(__name__)

LOG_TAIL_LINES = 20
EXEC_TIMEOUT_S = 120.0
START_ATTEMPTS = 3
"""Creating + starting is retried on a port lost to a race after it was checked."""
ACCEPTED_MEMORY = 1024


@dataclass
class Op:
    id: str
    kind: OperationKind
    service_id: str
    task: asyncio.Task[None] | None = None


@dataclass
class Deps:
    """What the operations work with (built once by the component)."""

    settings: Settings
    driver: DockerDriver
    catalog: CatalogView
    desired: DesiredStore
    observed: ObservedStore
    events: EventPublisher
    tasks: TaskOwner
    facts: Callable[[], HostFacts | None]
    ports: PortAllocator
    instance: str
    """This premd's id, on the labels of every container it makes."""


def volume_name(service_id: str) -> str:
    return f"prem-{service_id}-data"


def placements(gpus: list[GpuInfo]) -> list[GpuPlacement]:
    return [GpuPlacement(uuid=g.uuid, index=g.index, name=g.name) for g in gpus]


class Operations:
    def __init__(self, deps: Deps, on_settled: Callable[[], None]) -> None:
        self.d = deps
        self._on_settled = on_settled
        self._ops: dict[str, Op] = {}
        self._settled_at: dict[str, float] = {}
        self._accepted: OrderedDict[str, OperationAccepted] = OrderedDict()
        self._stop_locks: dict[str, asyncio.Lock] = {}
        self.backoff: dict[str, Backoff] = {}
        self.pulling: set[str] = set()
        """Services with a pull in flight (kept by Pulls)."""

    # ------------------------------------------------------------ bookkeeping

    def busy(self) -> set[str]:
        return set(self._ops)

    def settled_since(self, service_id: str, since: float) -> bool:
        """An operation on the service ended after ``since`` (a relist taken before is stale for it)."""
        return self._settled_at.get(service_id, 0.0) >= since

    def _register(self, op: Op) -> None:
        self._ops[op.service_id] = op

    async def _record(self, op: Op, *, force: bool = False) -> DesiredState:
        """Register the operation (reconcile keeps off the service from now on), then record desired state."""
        self._register(op)
        try:
            return await self.d.desired.set(op.service_id, True, op.id, force=force)
        except BaseException:
            self._finish(op)
            raise

    def _finish(self, op: Op) -> None:
        if self._ops.get(op.service_id) is op:
            del self._ops[op.service_id]
        self._settled_at[op.service_id] = time.monotonic()
        self._on_settled()

    def _remember(self, key: str | None, accepted: OperationAccepted) -> OperationAccepted:
        if key:
            self._accepted[key] = accepted
            while len(self._accepted) > ACCEPTED_MEMORY:
                self._accepted.popitem(last=False)
        return accepted

    async def _event(self, op: Op, type_: EventType, **fields: object) -> None:
        await self.d.events.publish(op.id, op.service_id, op.kind, type_, **fields)

    # ------------------------------------------------------------ lookups

    def manifest(self, service_id: str) -> Manifest:
        entry = self.d.catalog.get(service_id)
        if entry is None:
            raise NotFoundError(Code.SERVICE_NOT_FOUND, f"Service {service_id} not found.")
        return entry.manifest

    def image_for(self, manifest: Manifest) -> tuple[ImageEntry, bool]:
        image, gpu = select_image(manifest, self.d.facts())
        if image is None:
            raise ConflictError(Code.SERVICE_UNSUPPORTED, f"Service {manifest.id} has no image for this machine.")
        return image, gpu

    async def local_image(self, service_id: str, ref: str, *, ask_docker: bool = True) -> str:
        """The local tag to run: the manifest's, else an older local tag of the same repository (premd)."""
        state = self.d.observed.state(service_id)
        if state.downloaded and state.downloaded_image:
            return state.downloaded_image
        if ask_docker and await self.d.driver.image(ref) is not None:
            return normalize_ref(ref)
        if ask_docker:
            downloaded, local, _ = image_status(ref, [t for i in await self.d.driver.images() for t in i.tags])
            if downloaded and local:
                return local
        raise ConflictError(Code.IMAGE_NOT_DOWNLOADED, f"Image {ref} of {service_id} is not downloaded.")

    def place(self, manifest: Manifest, gpu: bool, force: bool) -> list[GpuInfo]:
        facts = self.d.facts()
        if not gpu or facts is None or not facts.gpus:
            return []
        chosen = place_gpus(manifest, facts.gpus)
        if not chosen and force:
            chosen = [max(facts.gpus, key=lambda g: (g.memory_free_mib, -g.index))]
        return chosen

    async def containers_of(self, service_id: str) -> list[ContainerInfo]:
        return [c for c in await self.d.driver.containers() if owner(c, {service_id}, self.d.instance) == service_id]

    # ------------------------------------------------------------ commands

    async def start(self, cmd: StartService) -> OperationAccepted:
        """Validate, check fit, record desired state, reply; the start runs in a task."""
        sid = cmd.service_id
        key = check_operation_id(cmd.operation_id) if cmd.operation_id else None
        if key and (seen := self._accepted.get(key)) is not None:
            return msgspec.structs.replace(seen, joined=True)
        manifest = self.manifest(sid)
        image, gpu = self.image_for(manifest)
        if (op := self._ops.get(sid)) is not None:
            if op.kind == "stop":
                raise ConflictError(Code.STATE_CONFLICT, f"Service {sid} is stopping.")
            return self._remember(key, OperationAccepted(operation_id=op.id, service_id=sid, kind=op.kind, joined=True))
        state = self.d.observed.state(sid)
        if state.running and state.container_id:
            desired_now = self.d.desired.get(sid)
            previous = state.operation_id or (desired_now.operation_id if desired_now is not None else "")
            return self._remember(
                key, OperationAccepted(operation_id=previous or "", service_id=sid, kind="start", joined=True)
            )
        ref = await self.local_image(sid, image.image)
        facts = self.d.facts()
        if facts is not None and not cmd.force:
            check_memory(manifest, facts)
        gpus = self.place(manifest, gpu, cmd.force)
        op = Op(key or new_operation_id(), "start", sid)
        self.backoff.pop(sid, None)  # a start asked for by a user begins a fresh crash count
        desired = await self._record(op, force=cmd.force)
        op.task = self.d.tasks.spawn(self._run_start(op, manifest, ref, gpus, desired.generation), f"start {sid}")
        return self._remember(key, OperationAccepted(operation_id=op.id, service_id=sid, kind="start"))

    async def restart(self, service_id: str) -> OperationAccepted:
        """Restart in place when the running container already runs the image to use, else recreate it."""
        manifest = self.manifest(service_id)
        image, gpu = self.image_for(manifest)
        if (op := self._ops.get(service_id)) is not None:
            if op.kind == "stop":
                raise ConflictError(Code.STATE_CONFLICT, f"Service {service_id} is stopping.")
            return OperationAccepted(operation_id=op.id, service_id=service_id, kind=op.kind, joined=True)
        ref = await self.local_image(service_id, image.image)
        found = sorted(await self.containers_of(service_id), key=lambda c: (c.running, c.created), reverse=True)
        in_place = found[0] if found and found[0].running and normalize_ref(found[0].image) == ref else None
        facts = self.d.facts()
        gpus: list[GpuInfo] = []
        if in_place is not None and facts is not None:
            gpus = [g for g in facts.gpus if g.uuid in in_place.gpus]
        elif in_place is None:
            if facts is not None:
                check_memory(manifest, facts)
            gpus = self.place(manifest, gpu, False)
        op = Op(new_operation_id(), "restart", service_id)
        desired = await self._record(op)
        work = self._run_start(op, manifest, ref, gpus, desired.generation, in_place=in_place)
        op.task = self.d.tasks.spawn(work, f"restart {service_id}")
        return OperationAccepted(operation_id=op.id, service_id=service_id, kind="restart")

    async def stop(self, service_id: str) -> ServiceStopped:
        """Synchronous: replies once the containers are gone and KV says stopped."""
        lock = self._stop_locks.setdefault(service_id, asyncio.Lock())
        async with lock:
            cancelled = await self._cancel(service_id)
            op = Op(new_operation_id(), "stop", service_id)
            self._register(op)
            try:
                found = await self.containers_of(service_id)
                if not found and not self.d.desired.wants_running(service_id) and not cancelled:
                    raise ConflictError(Code.SERVICE_NOT_RUNNING, f"Service {service_id} is not running.")
                await self.d.desired.set(service_id, False, op.id)
                for c in found:
                    await self.d.driver.remove(c.id)
                self.backoff.pop(service_id, None)
                await self.d.observed.change(
                    service_id,
                    phase="stopped",
                    running=False,
                    ready=False,
                    host_port=None,
                    container_id=None,
                    volume_name=None,
                    gpus=[],
                    operation_id=op.id,
                    last_error=None,
                    error_code=None,
                    exit_code=None,
                    log_tail=None,
                )
                await self._event(op, "succeeded", phase="stopped", status="stopped")
            finally:
                self._finish(op)
        return ServiceStopped(service_id=service_id, message=f"Service {service_id} stopped successfully.")

    async def _cancel(self, service_id: str) -> bool:
        op = self._ops.get(service_id)
        if op is None or op.task is None:
            return False
        op.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await op.task
        await self._event(
            op, "failed", phase="stopped", error_code=Code.SERVICE_START_FAILED, message="cancelled by a stop"
        )
        return True

    async def stop_all(self) -> int:
        """Stop every service that runs or should run; returns how many were stopped."""
        known = set(self._known_ids())
        found = {
            sid for c in await self.d.driver.containers() if c.running and (sid := owner(c, known, self.d.instance))
        }
        wanted = {sid for sid, d in self.d.desired.items() if d.running}
        stopped = 0
        for sid in sorted(found | wanted | self.busy()):
            try:
                await self.stop(sid)
                stopped += 1
            except AppError as exc:
                if exc.code != Code.SERVICE_NOT_RUNNING:
                    raise
        return stopped

    def _known_ids(self) -> list[str]:
        return [e.manifest.id for e in self.d.catalog.entries()]

    # ------------------------------------------------------------ reconcile entry points

    def start_for_reconcile(self, service_id: str) -> bool:
        """Start a service that should run and does not (crash, container deleted, scheduler killed mid-start)."""
        if service_id in self._ops:
            return False
        try:
            manifest = self.manifest(service_id)
            image, gpu = self.image_for(manifest)
        except AppError as exc:
            logger.warning("cannot start %s: %s", service_id, exc.message)
            return False
        state = self.d.observed.state(service_id)
        ref = state.downloaded_image if state.downloaded else None
        if ref is None:
            logger.warning("cannot start %s: image %s not downloaded", service_id, image.image)
            return False
        desired = self.d.desired.get(service_id)
        force = desired.force if desired is not None else False
        op = Op(new_operation_id(), "reconcile", service_id)
        self._register(op)
        generation = desired.generation if desired is not None else 0
        work = self._run_start(op, manifest, ref, self.place(manifest, gpu, force), generation, user=False)
        op.task = self.d.tasks.spawn(work, f"reconcile start {service_id}")
        return True

    def watch(self, service_id: str, container: ContainerInfo) -> None:
        """Follow an adopted running container until it is ready.

        Its execCommands run once ready when premd made it (it was never seen ready: the scheduler died
        mid-start, before running them); never for a container of the Python premd (which ran them at once).
        """
        if service_id in self._ops:
            return
        manifest = self.d.catalog.get(service_id)
        if manifest is None:
            return
        op = Op(new_operation_id(), "reconcile", service_id)
        self._register(op)
        op.task = self.d.tasks.spawn(self._run_watch(op, manifest.manifest, container), f"watch {service_id}")

    # ------------------------------------------------------------ the work

    async def _run_start(
        self,
        op: Op,
        manifest: Manifest,
        ref: str,
        gpus: list[GpuInfo],
        generation: int,
        *,
        user: bool = True,
        in_place: ContainerInfo | None = None,
    ) -> None:
        cid: str | None = None
        try:
            await self._event(op, "accepted", status="accepted")
            if in_place is not None:
                cid, port, volume = in_place.id, in_place.host_port, in_place.volume_name
                await self.d.driver.restart(cid)
            else:
                cid, port, volume = await self._create_and_start(op, manifest, ref, gpus, generation)
            await self.d.observed.change(
                op.service_id,
                phase="starting",
                running=True,
                ready=False,
                host_port=port,
                container_id=cid,
                image=ref,
                volume_name=volume,
                gpus=placements(gpus),
                operation_id=op.id,
                last_error=None,
                error_code=None,
                exit_code=None,
                log_tail=None,
            )
            await self._event(op, "state", phase="starting", host_port=port, status=self._started_text(manifest, port))
            await self._become_ready(op, manifest, cid, port, run_exec=True)
        except AppError as exc:
            await self._failed(op, cid, exc.code, exc.message, user=user)
        except Exception:  # boundary: the task must report, whatever broke
            logger.exception("start of %s failed", op.service_id)
            await self._failed(op, cid, Code.INTERNAL, "internal error (see the scheduler's log)", user=user)
        finally:
            self._finish(op)

    @staticmethod
    def _started_text(manifest: Manifest, port: int | None) -> str:
        preferred = manifest.default_external_port or manifest.default_port
        if port is not None and preferred is not None and port != preferred:
            return f"container running on port {port} (port {preferred} was taken)"
        return "container running" if port is None else f"container running on port {port}"

    async def _run_watch(self, op: Op, manifest: Manifest, container: ContainerInfo) -> None:
        try:
            facts = self.d.facts()
            gpus = [g for g in facts.gpus if g.uuid in container.gpus] if facts is not None else []
            await self.d.observed.change(
                op.service_id,
                phase="starting",
                running=True,
                ready=False,
                host_port=container.host_port,
                container_id=container.id,
                image=container.image,
                volume_name=container.volume_name,
                gpus=placements(gpus) if gpus else self.d.observed.state(op.service_id).gpus,
                operation_id=op.id,
            )
            await self._event(op, "state", phase="starting", host_port=container.host_port, status="adopted")
            await self._become_ready(op, manifest, container.id, container.host_port, run_exec=container.managed)
        except AppError as exc:
            await self._failed(op, container.id, exc.code, exc.message, user=False)
        finally:
            self._finish(op)

    async def _create_and_start(
        self, op: Op, manifest: Manifest, ref: str, gpus: list[GpuInfo], generation: int
    ) -> tuple[str, int | None, str | None]:
        sid = op.service_id
        everything = await self.d.driver.containers()
        for c in everything:
            if owner(c, {sid}, self.d.instance) == sid:
                await self.d.driver.remove(c.id)  # a stale one (premd: ``docker rm -f <id>`` first)
        volume = volume_name(sid) if manifest.volume_path else None
        if volume is not None:
            await self.d.driver.ensure_volume(volume, self.d.instance, sid)
        others = [c for c in everything if c.running and owner(c, {sid}, self.d.instance) != sid]
        published = {c.host_port for c in others if c.host_port is not None}
        preferred = manifest.default_external_port or manifest.default_port
        lost: set[int] = set()
        for _ in range(START_ATTEMPTS):
            port = None
            if manifest.default_port is not None and preferred is not None:
                port = self.d.ports.reserve(preferred, published | lost)
            try:
                spec = self.container_spec(op.id, manifest, ref, gpus, generation, port, volume)
                cid = await self.d.driver.create(spec)
                try:
                    await self.d.driver.start(cid)
                except AppError as exc:
                    await self.d.driver.remove(cid)
                    if port is not None and ("allocated" in exc.message or "in use" in exc.message):
                        lost.add(port)
                        continue
                    raise
                return cid, port, volume
            finally:
                self.d.ports.release(port)
        raise ConflictError(Code.PORT_UNAVAILABLE, f"no free host port for {sid} after {START_ATTEMPTS} attempts")

    def container_spec(
        self,
        operation_id: str,
        manifest: Manifest,
        ref: str,
        gpus: list[GpuInfo],
        generation: int,
        port: int | None,
        volume: str | None,
    ) -> ContainerSpec:
        """The container of a service: named after it, labelled as premd's, its GPUs by UUID."""
        return ContainerSpec(
            name=manifest.id,
            image=ref,
            instance=self.d.instance,
            service_id=manifest.id,
            operation_id=operation_id,
            generation=generation,
            env=list(manifest.env_variables or []),
            command=manifest.command,
            container_port=manifest.default_port,
            host_ip=self.d.settings.service_host,
            host_port=port,
            volume_name=volume,
            volume_path=manifest.volume_path,
            gpu_uuids=[g.uuid for g in gpus],
            restart_policy=self.d.settings.restart_policy,
        )

    async def _alive(self, container_id: str) -> bool:
        status = await self.d.driver.status(container_id)
        return status is not None and status.running

    async def _become_ready(self, op: Op, manifest: Manifest, cid: str, port: int | None, *, run_exec: bool) -> None:
        deadline = manifest.readiness_timeout_s or self.d.settings.readiness_timeout_s
        if port is None:
            outcome = "ready" if await self._alive(cid) else "exited"
        else:
            check = probe_http if uses_http(manifest) else probe_tcp
            probe = functools.partial(check, self.d.settings.service_host, port)
            outcome = await wait_ready(probe, functools.partial(self._alive, cid), deadline)
        if outcome == "exited":
            raise error_for(Code.SERVICE_START_FAILED, f"Service {op.service_id} exited while starting.")
        if outcome == "timeout":
            raise error_for(Code.SERVICE_NOT_READY, f"Service {op.service_id} not ready within {deadline:g} s.")
        if run_exec:
            for command in manifest.exec_commands or []:
                code = await asyncio.wait_for(self.d.driver.exec(cid, command), EXEC_TIMEOUT_S)
                if code:
                    logger.warning("%s: exec %r exited with %s", op.service_id, command, code)
        await self.d.observed.change(op.service_id, phase="ready", ready=True)
        await self._event(op, "succeeded", phase="ready", host_port=port, status="ready")

    async def _failed(self, op: Op, cid: str | None, code: str, message: str, *, user: bool) -> None:
        """Report a failed start: exit code and log tail kept (the container stays for its logs)."""
        exit_code: int | None = None
        tail: list[str] | None = None
        if cid is not None:
            with contextlib.suppress(AppError):
                status = await self.d.driver.status(cid)
                if status is not None and status.running:
                    await self.d.driver.kill(cid)
                    status = await self.d.driver.status(cid)
                exit_code = status.exit_code if status is not None else None
                tail = await self.d.driver.logs_tail(cid, LOG_TAIL_LINES)
        if exit_code is not None and code == Code.SERVICE_START_FAILED:
            message = f"{message[:-1]}: exit code {exit_code}."
        with contextlib.suppress(AppError):
            if user:  # a start that failed is not retried by reconcile; a crash of a ready service is
                await self.d.desired.set(op.service_id, False, op.id)
            await self.d.observed.change(
                op.service_id,
                phase="failed",
                running=False,
                ready=False,
                host_port=None,
                container_id=cid,
                operation_id=op.id,
                error_code=code,
                last_error=message,
                exit_code=exit_code,
                log_tail=tail,
            )
        await self._event(
            op, "failed", phase="failed", error_code=code, message=message, exit_code=exit_code, log_tail=tail
        )
