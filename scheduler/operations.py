"""Service operations: start, restart, stop, and the readiness watch of an adopted container.

A command handler validates, checks fit, records desired state, registers the operation and replies;
the work (``scheduler/starter.py``) runs in a task owned by the scheduler. One operation per service at
a time: a second start joins the one in flight; a stop takes the service over and cancels it. Observed
state is written before the event announcing it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable

import msgspec

from common.errors import AppError, Code, ConflictError, NotFoundError
from common.fit import check_memory, place_gpus, select_image
from common.manifest import ImageEntry, Manifest
from common.messages import DesiredState, GpuInfo, OperationAccepted, ServiceStopped, StartService
from scheduler.deps import Deps, Op
from scheduler.docker_driver import ContainerInfo, ContainerSpec
from scheduler.events import check_operation_id, new_operation_id
from scheduler.reconcile_rules import Backoff, image_repositories, known_services, owner
from scheduler.starter import Starter, StartPlan
from scheduler.state import NO_ERROR, NOT_RUNNING, image_status, normalize_ref

logger = logging.getLogger(__name__)

ACCEPTED_MEMORY = 1024
"""How many client-chosen operation ids are remembered (a retried start with one of them is joined)."""


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
        self._starter = Starter(deps, self.backoff, self._finish)

    # ------------------------------------------------------------ bookkeeping

    def busy(self) -> set[str]:
        return set(self._ops)

    def settled_since(self, service_id: str, since: float) -> bool:
        """An operation on the service ended after ``since`` (a relist taken before is stale for it)."""
        return self._settled_at.get(service_id, 0.0) >= since

    def _register(self, op: Op) -> None:
        self._ops[op.service_id] = op

    def _joined(self, service_id: str, key: str | None) -> OperationAccepted | None:
        """The reply joining the operation in flight on the service, if any (a stop in flight refuses)."""
        op = self._ops.get(service_id)
        if op is None:
            return None
        if op.kind == "stop":
            raise ConflictError(Code.STATE_CONFLICT, f"Service {service_id} is stopping.")
        return self._remember(
            key, OperationAccepted(operation_id=op.id, service_id=service_id, kind=op.kind, joined=True)
        )

    async def _record(self, op: Op, *, force: bool = False, on_demand: bool = False) -> DesiredState:
        """Register the operation (reconcile keeps off the service from now on), then record desired state.

        Nothing may be awaited between the caller's last ``_joined`` check and this call.
        """
        self._register(op)
        try:
            desired = await self.d.desired.set(op.service_id, True, op.id, force=force, on_demand=on_demand)
            if self._ops.get(op.service_id) is not op:  # a stop took the service over meanwhile
                raise ConflictError(Code.STATE_CONFLICT, f"Service {op.service_id} is stopping.")
        except BaseException:
            self._finish(op)
            raise
        return desired

    def _spawn(self, op: Op, plan: StartPlan, name: str) -> None:
        op.task = self.d.tasks.spawn(self._starter.run_start(op, plan), f"{name} {op.service_id}")

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

    async def local_image(self, service_id: str, ref: str) -> str:
        """The local tag to run: the manifest's, else an older local tag of the same repository (premd)."""
        state = self.d.observed.state(service_id)
        if state.downloaded and state.downloaded_image:
            return state.downloaded_image
        if await self.d.driver.image(ref) is not None:
            return normalize_ref(ref)
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
        """The container a start of the service would create."""
        return self._starter.container_spec(operation_id, StartPlan(manifest, ref, gpus, generation), port, volume)

    async def containers_of(self, service_id: str) -> list[ContainerInfo]:
        entry = self.d.catalog.get(service_id)
        known = {service_id: image_repositories(entry.manifest) if entry is not None else frozenset[str]()}
        return [
            c
            for c in await self.d.driver.containers()
            if owner(c, known, self.d.instance, self.d.reclaim_home) == service_id
        ]

    # ------------------------------------------------------------ commands

    async def start(self, cmd: StartService) -> OperationAccepted:
        """Validate, check fit, record desired state, reply; the start runs in a task."""
        sid = cmd.service_id
        key = check_operation_id(cmd.operation_id) if cmd.operation_id else None
        if key and (seen := self._accepted.get(key)) is not None:
            return msgspec.structs.replace(seen, joined=True)
        manifest = self.manifest(sid)
        image, gpu = self.image_for(manifest)
        if (joined := self._joined(sid, key)) is not None:
            return await self._joined_by(cmd, joined)
        state = self.d.observed.state(sid)
        if state.running and state.container_id:
            desired_now = self.d.desired.get(sid)
            previous = state.operation_id or (desired_now.operation_id if desired_now is not None else "")
            running = OperationAccepted(operation_id=previous, service_id=sid, kind="start", joined=True)
            return await self._joined_by(cmd, self._remember(key, running))
        ref = await self.local_image(sid, image.image)
        if (joined := self._joined(sid, key)) is not None:  # an operation began while Docker was asked
            return await self._joined_by(cmd, joined)
        facts = self.d.facts()
        if facts is not None and not cmd.force:
            check_memory(manifest, facts)
        gpus = self.place(manifest, gpu, cmd.force)
        op = Op(key or new_operation_id(), "start", sid)
        self.backoff.pop(sid, None)  # a start asked for by a user begins a fresh crash count
        desired = await self._record(op, force=cmd.force, on_demand=cmd.on_demand)
        self._spawn(op, StartPlan(manifest, ref, gpus, desired.generation), "start")
        return self._remember(key, OperationAccepted(operation_id=op.id, service_id=sid, kind="start"))

    async def _joined_by(self, cmd: StartService, joined: OperationAccepted) -> OperationAccepted:
        """A user's start of a service running (or starting) on demand makes it the user's: no idle stop."""
        if not cmd.on_demand:
            await self.d.desired.claim(cmd.service_id)
        return joined

    async def restart(self, service_id: str) -> OperationAccepted:
        """Restart in place when the running container already runs the image to use, else recreate it."""
        manifest = self.manifest(service_id)
        image, gpu = self.image_for(manifest)
        if (joined := self._joined(service_id, None)) is not None:
            return joined
        ref = await self.local_image(service_id, image.image)
        found = sorted(await self.containers_of(service_id), key=lambda c: (c.running, c.created), reverse=True)
        if (joined := self._joined(service_id, None)) is not None:  # an operation began while Docker was asked
            return joined
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
        self._spawn(op, StartPlan(manifest, ref, gpus, desired.generation, in_place=in_place), "restart")
        return OperationAccepted(operation_id=op.id, service_id=service_id, kind="restart")

    async def stop(self, service_id: str, *, only_on_demand: bool = False, reason: str = "") -> ServiceStopped:
        """Synchronous: replies once the containers are gone and KV says stopped.

        ``only_on_demand`` (the gateway's idle stop): refused unless the service runs because a request
        started it and no operation is in flight; checked with no await before the stop takes the service.
        """
        lock = self._stop_locks.setdefault(service_id, asyncio.Lock())
        async with lock:
            op = Op(new_operation_id(), "stop", service_id)
            previous = self._ops.get(service_id)
            if only_on_demand:
                check_idle_stop(service_id, self.d.desired.on_demand(service_id), previous)
            self._register(op)  # first: from now on a start is refused and reconcile keeps off
            try:
                await self._stop_registered(op, previous, reason or "stopped")
            finally:
                self._finish(op)
        return ServiceStopped(service_id=service_id, message=f"Service {service_id} stopped successfully.")

    async def _stop_registered(self, op: Op, previous: Op | None, status: str = "stopped") -> None:
        sid = op.service_id
        interrupted = await self._cancel(previous)
        found = await self.containers_of(sid)
        if not found and not interrupted and self.d.catalog.get(sid) is None and self.d.desired.get(sid) is None:
            # Not premd's: no such service, nothing premd made or was asked to run under that id.
            raise NotFoundError(Code.SERVICE_NOT_FOUND, f"Service {sid} not found.")
        if not found and not self.d.desired.wants_running(sid) and not interrupted:
            raise ConflictError(Code.SERVICE_NOT_RUNNING, f"Service {sid} is not running.")
        await self.d.desired.set(sid, False, op.id)
        for c in found:
            await self.d.driver.remove(c.id)
        self.backoff.pop(sid, None)
        await self.d.observed.change(
            sid,
            phase="stopped",
            **NOT_RUNNING,
            **NO_ERROR,
            container_id=None,
            volume_name=None,
            gpus=[],
            operation_id=op.id,
        )
        await self.d.events.publish(op.id, sid, op.kind, "succeeded", phase="stopped", status=status)

    async def _cancel(self, op: Op | None) -> bool:
        """End the operation a stop takes over (True when there was one); its task, if any, is cancelled."""
        if op is None:
            return False
        if op.task is not None:
            op.task.cancel()
            await asyncio.wait([op.task])  # not ``await op.task``: that would swallow a cancel of this stop
        message = "cancelled by a stop"
        code = Code.SERVICE_START_FAILED
        await self.d.events.publish(
            op.id, op.service_id, op.kind, "failed", phase="stopped", error_code=code, message=message
        )
        return True

    async def stop_all(self) -> int:
        """Stop every service that runs or should run; returns how many were stopped."""
        known = known_services(self.d.catalog.entries())
        found = {
            sid
            for c in await self.d.driver.containers()
            if c.running and (sid := owner(c, known, self.d.instance, self.d.reclaim_home))
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
        generation = desired.generation if desired is not None else 0
        op = Op(new_operation_id(), "reconcile", service_id)
        self._register(op)
        self._spawn(
            op, StartPlan(manifest, ref, self.place(manifest, gpu, force), generation, user=False), "reconcile start"
        )
        return True

    def watch(self, service_id: str, container: ContainerInfo) -> None:
        """Follow an adopted running container until it is ready (see ``Starter.run_watch``)."""
        entry = self.d.catalog.get(service_id)
        if service_id in self._ops or entry is None:
            return
        op = Op(new_operation_id(), "reconcile", service_id)
        self._register(op)
        op.task = self.d.tasks.spawn(self._starter.run_watch(op, entry.manifest, container), f"watch {service_id}")


def check_idle_stop(service_id: str, on_demand: bool, in_flight: Op | None) -> None:
    """An idle stop applies only to a service started on demand, with no operation on it (issue 15)."""
    if not on_demand:
        raise ConflictError(Code.STATE_CONFLICT, f"Service {service_id} was not started on demand: not stopped.")
    if in_flight is not None:
        raise ConflictError(Code.STATE_CONFLICT, f"Service {service_id} has a {in_flight.kind} in flight: not stopped.")
