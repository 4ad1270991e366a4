"""The work of one start: create the container (or restart it in place), wait until ready, run execCommands.

Observed state is written before the event announcing it. A failed start keeps its container (for its
logs), reports exit code and log tail, and, when a user asked for it, sets desired "stopped": a start
that never worked is not retried in a loop. A start reconcile made that failed before any container
existed backs off like a crash (else each failure's pass would try again at once).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from common.errors import AppError, Code, ConflictError, error_for
from common.manifest import Manifest
from common.messages import EventType, GpuInfo, GpuPlacement
from scheduler.deps import Deps, Op
from scheduler.docker_driver import ContainerInfo, ContainerSpec
from scheduler.readiness import PROBES, readiness_check, wait_ready
from scheduler.reconcile_rules import Backoff, after_crash, image_repositories, owner
from scheduler.state import NO_ERROR, NOT_RUNNING

logger = logging.getLogger(__name__)

LOG_TAIL_LINES = 20
EXEC_TIMEOUT_S = 120.0
START_ATTEMPTS = 3
"""Creating + starting is retried on a port lost to a race after it was checked."""


def volume_name(service_id: str) -> str:
    return f"prem-{service_id}-data"


def placements(gpus: list[GpuInfo]) -> list[GpuPlacement]:
    return [GpuPlacement(uuid=g.uuid, index=g.index, name=g.name) for g in gpus]


@dataclass(frozen=True)
class StartPlan:
    """What one start runs (decided, fit-checked, by the command or by reconcile)."""

    manifest: Manifest
    ref: str
    """The local image tag to run."""
    gpus: list[GpuInfo]
    generation: int
    user: bool = True
    """A user asked for it: a failure sets desired "stopped"."""
    in_place: ContainerInfo | None = None
    """Restart this running container instead of recreating it."""


@dataclass
class _Run:
    container_id: str | None = None
    """The container the operation made or works on, once there is one (a failure reports on it)."""


class Starter:
    def __init__(self, deps: Deps, backoff: dict[str, Backoff], finish: Callable[[Op], None]) -> None:
        self.d = deps
        self._backoff = backoff
        self._finish = finish

    async def run_start(self, op: Op, plan: StartPlan) -> None:
        """The task of a start or restart: ``accepted``, ``state`` (starting), then ``succeeded`` or ``failed``."""
        async with self._reporting(op, user=plan.user) as run:
            await self._event(op, "accepted", status="accepted")
            if plan.in_place is not None:
                run.container_id, port = plan.in_place.id, plan.in_place.host_port
                volume = plan.in_place.volume_name
                await self.d.driver.restart(plan.in_place.id)
            else:
                run.container_id, port, volume = await self._create_and_start(op, plan)
            await self.d.observed.change(
                op.service_id,
                phase="starting",
                running=True,
                ready=False,
                host_port=port,
                container_id=run.container_id,
                image=plan.ref,
                volume_name=volume,
                gpus=placements(plan.gpus),
                operation_id=op.id,
                **NO_ERROR,
            )
            status = _started_text(plan.manifest, port)
            await self._event(op, "state", phase="starting", host_port=port, status=status)
            await self._become_ready(op, plan.manifest, run.container_id, port, run_exec=True)

    async def run_watch(self, op: Op, manifest: Manifest, container: ContainerInfo) -> None:
        """The task following an adopted running container until it is ready.

        Its execCommands run once ready when premd made it (it was never seen ready: the scheduler died
        mid-start, before running them); never for a container of the Python premd (which ran them at once).
        """
        async with self._reporting(op, user=False) as run:
            run.container_id = container.id
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

    @contextlib.asynccontextmanager
    async def _reporting(self, op: Op, *, user: bool) -> AsyncIterator[_Run]:
        """The operation's boundary: whatever broke ends in a ``failed`` event; the operation always settles."""
        run = _Run()
        try:
            yield run
        except AppError as exc:
            await self._failed(op, run.container_id, exc.code, exc.message, user=user)
        except Exception:  # boundary: the task must report, whatever broke
            logger.exception("%s of %s failed", op.kind, op.service_id)
            message = "internal error (see the scheduler's log)"
            await self._failed(op, run.container_id, Code.INTERNAL, message, user=user)
        finally:
            self._finish(op)

    async def _event(self, op: Op, type_: EventType, **fields: object) -> None:
        await self.d.events.publish(op.id, op.service_id, op.kind, type_, **fields)

    # ------------------------------------------------------------ the container

    async def _create_and_start(self, op: Op, plan: StartPlan) -> tuple[str, int | None, str | None]:
        sid, manifest = op.service_id, plan.manifest
        everything = await self.d.driver.containers()
        mine = {sid: image_repositories(manifest)}
        for c in everything:
            if owner(c, mine, self.d.instance, self.d.reclaim_home) == sid:
                await self.d.driver.remove(c.id)  # a stale one (premd: ``docker rm -f <id>`` first)
        self._check_name_free(sid, everything, mine)
        volume = volume_name(sid) if manifest.volume_path else None
        if volume is not None:
            await self.d.driver.ensure_volume(volume, self.d.instance, sid)
        others = [c for c in everything if c.running and owner(c, mine, self.d.instance, self.d.reclaim_home) != sid]
        published = {c.host_port for c in others if c.host_port is not None}
        preferred = manifest.default_external_port or manifest.default_port
        lost: set[int] = set()
        for _ in range(START_ATTEMPTS):
            port = None
            if manifest.default_port is not None and preferred is not None:
                port = self.d.ports.reserve(preferred, published | lost)
            try:
                cid = await self.d.driver.create(self.container_spec(op.id, plan, port, volume))
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

    def _check_name_free(self, sid: str, everything: list[ContainerInfo], mine: dict[str, frozenset[str]]) -> None:
        """Containers are named after the service: one that is not this premd's and holds the name is reported
        (Docker would only say "409 Conflict"), and left alone."""
        for c in everything:
            if c.name != sid or owner(c, mine, self.d.instance, self.d.reclaim_home) == sid:
                continue
            if c.managed:
                where = f"premd instance {c.instance}" if c.instance else "no premd instance label"
                where += f" at {c.home}" if c.home else ""
                state = "running" if c.running else c.state
                message = (
                    f"Container name {sid} is taken by a {state} container of another premd on this Docker engine "
                    f"({where}): stop the service there, or remove the container (docker rm -f {sid})."
                )
            else:
                message = (
                    f"Container name {sid} is taken by a container premd did not make (image {c.image}): "
                    f"rename or remove it (docker rm -f {sid}), then start {sid} again."
                )
            raise ConflictError(Code.CONTAINER_NAME_TAKEN, message)

    def container_spec(self, operation_id: str, plan: StartPlan, port: int | None, volume: str | None) -> ContainerSpec:
        """The container of a service: named after it, labelled as premd's, its GPUs by UUID."""
        manifest = plan.manifest
        return ContainerSpec(
            name=manifest.id,
            image=plan.ref,
            instance=self.d.instance,
            home=self.d.home,
            service_id=manifest.id,
            operation_id=operation_id,
            generation=plan.generation,
            env=list(manifest.env_variables or []),
            command=manifest.command,
            container_port=manifest.default_port,
            host_ip=self.d.settings.service_host,
            host_port=port,
            volume_name=volume,
            volume_path=manifest.volume_path,
            gpu_uuids=[g.uuid for g in plan.gpus],
            restart_policy=self.d.settings.restart_policy,
        )

    # ------------------------------------------------------------ readiness

    async def _alive(self, container_id: str) -> bool:
        status = await self.d.driver.status(container_id)
        return status is not None and status.running

    async def _become_ready(self, op: Op, manifest: Manifest, cid: str, port: int | None, *, run_exec: bool) -> None:
        deadline = manifest.readiness_timeout_s or self.d.settings.readiness_timeout_s
        if port is None:
            outcome = "ready" if await self._alive(cid) else "exited"
        else:
            check = PROBES[readiness_check(manifest)]
            probe = functools.partial(check, self.d.settings.service_host, port)
            outcome = await wait_ready(probe, functools.partial(self._alive, cid), deadline)
        if outcome == "exited":
            raise error_for(Code.SERVICE_START_FAILED, f"Service {op.service_id} exited while starting.")
        if outcome == "timeout":
            raise error_for(Code.SERVICE_NOT_READY, f"Service {op.service_id} not ready within {deadline:g} s.")
        if run_exec:
            await self._run_exec(op.service_id, cid, manifest.exec_commands or [])
        await self.d.observed.change(op.service_id, phase="ready", ready=True)
        await self._event(op, "succeeded", phase="ready", host_port=port, status="ready")

    async def _run_exec(self, service_id: str, cid: str, commands: list[str]) -> None:
        """Each command with its time limit; one that fails or hangs is logged, never fatal (as in premd)."""
        for command in commands:
            try:
                async with asyncio.timeout(EXEC_TIMEOUT_S):
                    code = await self.d.driver.exec(cid, command)
            except TimeoutError:
                logger.warning("%s: exec %r still runs after %g s: left behind", service_id, command, EXEC_TIMEOUT_S)
            except AppError as exc:
                logger.warning("%s: exec %r failed: %s", service_id, command, exc.message)
            else:
                if code:
                    logger.warning("%s: exec %r exited with %s", service_id, command, code)

    # ------------------------------------------------------------ failure

    async def _failed(self, op: Op, cid: str | None, code: str, message: str, *, user: bool) -> None:
        """Report a failed start: exit code and log tail kept (the container stays for its logs)."""
        exit_code: int | None = None
        tail: list[str] | None = None
        if cid is not None:
            exit_code, tail = await self._post_mortem(cid)
        elif not user:  # reconcile tries again: not at once (no container whose crashes would be counted)
            s = self.d.settings
            previous = self._backoff.get(op.service_id)
            record = after_crash(previous, op.id, time.monotonic(), s.crash_backoff_s, s.crash_backoff_max_s)
            self._backoff[op.service_id] = record
        if exit_code is not None and code == Code.SERVICE_START_FAILED:
            message = f"{message[:-1]}: exit code {exit_code}."
        with contextlib.suppress(AppError):
            if user:  # a start that failed is not retried by reconcile; a crash of a ready service is
                await self.d.desired.set(op.service_id, False, op.id)
            await self.d.observed.change(
                op.service_id,
                phase="failed",
                **NOT_RUNNING,
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

    async def _post_mortem(self, cid: str) -> tuple[int | None, list[str] | None]:
        """Kill the container if it still runs (kept, for its logs); its exit code and log tail."""
        with contextlib.suppress(AppError):
            status = await self.d.driver.status(cid)
            if status is not None and status.running:
                await self.d.driver.kill(cid)
                status = await self.d.driver.status(cid)
            exit_code = status.exit_code if status is not None else None
            return exit_code, await self.d.driver.logs_tail(cid, LOG_TAIL_LINES)
        return None, None


def _started_text(manifest: Manifest, port: int | None) -> str:
    preferred = manifest.default_external_port or manifest.default_port
    if port is not None and preferred is not None and port != preferred:
        return f"container running on port {port} (port {preferred} was taken)"
    return "container running" if port is None else f"container running on port {port}"
