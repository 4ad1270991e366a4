"""The reconcile loop: relist Docker on start-up, on every relevant Docker event and periodically; converge.

Each pass also publishes a ServiceState for every catalog service (``downloaded`` and friends), so the
gateway's listing never asks Docker.
"""

from __future__ import annotations

import asyncio
import logging
import time

import msgspec

from common.errors import AppError, Code
from common.fit import select_image
from common.messages import CatalogEntry
from scheduler.deps import Deps
from scheduler.docker_driver import ContainerInfo, DockerEvent
from scheduler.events import new_operation_id
from scheduler.operations import Operations
from scheduler.reconcile_rules import (
    Action,
    Adopt,
    Backoff,
    Idle,
    Known,
    Remove,
    Start,
    after_crash,
    decide,
    known_services,
    owner,
)
from scheduler.starter import LOG_TAIL_LINES
from scheduler.state import NOT_RUNNING, TagIndex

logger = logging.getLogger(__name__)

DEBOUNCE_S = 0.05
"""Docker events come in bursts (create, start, ...): one pass for a burst."""
EVENTS_RETRY_S = 1.0
_CONTAINER_ACTIONS = frozenset(
    {"create", "start", "die", "destroy", "stop", "kill", "oom", "pause", "unpause", "rename"}
)
_IMAGE_ACTIONS = frozenset({"pull", "delete", "tag", "untag", "import", "load"})
_EXIT_ACTIONS = frozenset({"die", "oom"})
"""Events after which the engine's container list may still say "running" for a while (it is updated once
the container's network is torn down); inspect, which reads the container itself, already says it exited."""


class Reconciler:
    def __init__(self, deps: Deps, ops: Operations) -> None:
        self.d = deps
        self._ops = ops
        self._kick = asyncio.Event()
        self._exited: set[str] = set()
        """Containers Docker said died since the last pass: the pass asks each one's own state."""
        self._wake_at: float | None = None
        self._listed_at = 0.0
        """When the pass under way listed Docker."""
        self.passes = 0
        self.converged = asyncio.Event()
        """Set after the first complete pass."""
        self.attempted = asyncio.Event()
        """Set after the first pass, complete or not (Docker may be away)."""

    def _taken_over(self, service_id: str) -> bool:
        """An operation owns the service, or ended since this pass listed Docker: the listing is stale for it."""
        return service_id in self._ops.busy() or self._ops.settled_since(service_id, self._listed_at)

    def kick(self) -> None:
        self._kick.set()

    # ------------------------------------------------------------ loops

    async def run(self) -> None:
        """Pass, then wait for a kick, the relist interval or the next backoff deadline; forever."""
        while True:
            self._kick.clear()
            try:
                await self.pass_once()
            except AppError as exc:
                logger.warning("reconcile: %s", exc.message)
            except Exception:  # boundary: the loop must outlive one bad pass
                logger.exception("reconcile pass failed")
            self.attempted.set()
            timeout = self.d.settings.reconcile_interval_s
            if self._wake_at is not None:
                timeout = max(0.0, min(timeout, self._wake_at - time.monotonic()))
            try:
                async with asyncio.timeout(timeout):
                    await self._kick.wait()
                await asyncio.sleep(DEBOUNCE_S)  # coalesce a burst of events
            except TimeoutError:
                pass

    async def watch_docker(self) -> None:
        """Kick a pass on each Docker event about premd's containers or images; resubscribe when it ends."""
        while True:
            try:
                async for event in self.d.driver.events():
                    if self._relevant(event):
                        if event.kind == "container" and event.action in _EXIT_ACTIONS:
                            self._exited.add(event.object_id)
                        self.kick()
            except AppError as exc:
                logger.warning("docker events: %s", exc.message)
            except Exception:  # boundary: the watch must outlive a broken stream
                logger.exception("docker events stream failed")
            await asyncio.sleep(EVENTS_RETRY_S)  # the engine went away: retry, then relist
            self.kick()

    def _relevant(self, event: DockerEvent) -> bool:
        if event.kind == "image":
            return event.action in _IMAGE_ACTIONS
        if event.action not in _CONTAINER_ACTIONS:
            return False
        return bool(event.labels) or self.d.catalog.get(event.name) is not None

    # ------------------------------------------------------------ one pass

    async def pass_once(self) -> None:
        self._listed_at = started = time.monotonic()
        containers = await self._with_exits(await self.d.driver.containers())
        tags = [t for image in await self.d.driver.images() for t in image.tags]
        entries = self.d.catalog.entries()
        known = known_services(entries)
        await self._refresh_downloads(entries, tags)
        busy = self._ops.busy() | {sid for sid in known if self._ops.settled_since(sid, started)}
        self._wake_at = None
        for action in decide(
            known, dict(self.d.desired.items()), containers, busy, self.d.instance, self.d.reclaim_home
        ):
            if self._taken_over(action.service_id):
                continue  # an operation began (or even ended) while this pass was at work
            try:
                await self._apply(action, known)
            except AppError as exc:
                logger.warning("reconcile %s: %s", action.service_id, exc.message)
        await self._forget(known, containers)
        self.passes += 1
        self.converged.set()

    async def _with_exits(self, containers: list[ContainerInfo]) -> list[ContainerInfo]:
        """The listing, with each container Docker said died but the list still shows running as inspect sees it.

        Without this, a crash waited for the next event or relist (up to ``reconcile_interval_s``) to be seen."""
        exited, self._exited = self._exited, set()
        out = []
        for container in containers:
            if container.id in exited and container.running:
                status = await self.d.driver.status(container.id)
                if status is None or not status.running:
                    container = msgspec.structs.replace(
                        container, state=status.status if status else "exited", host_port=None
                    )
            out.append(container)
        return out

    async def refresh_downloads(self) -> None:
        tags = [t for image in await self.d.driver.images() for t in image.tags]
        await self._refresh_downloads(self.d.catalog.entries(), tags)

    async def _refresh_downloads(self, entries: list[CatalogEntry], tags: list[str]) -> None:
        facts = self.d.facts()
        index = TagIndex(tags)  # once per pass, not once per service
        for entry in entries:
            image, _ = select_image(entry.manifest, facts)
            downloaded, local, needs_update = index.status(image.image) if image else (False, None, False)
            await self.d.observed.change(
                entry.manifest.id, downloaded=downloaded, downloaded_image=local, needs_update=needs_update
            )

    async def _apply(self, action: Action, known: Known) -> None:
        sid = action.service_id
        if isinstance(action, Remove):
            if action.reason == "orphan" and self.d.desired.wants_running(sid):
                return
            logger.info("removing %s container %s of %s", action.reason, action.container.name, sid)
            await self.d.driver.remove(action.container.id)
        elif isinstance(action, Adopt):
            await self._adopt(action)
        elif isinstance(action, Start):
            await self._start(action)
        elif sid in known or action.container is not None:
            await self._idle(action)

    async def _adopt(self, action: Adopt) -> None:
        sid, c = action.service_id, action.container
        if action.record_desired:
            logger.info("adopting container %s for %s", c.name, sid)
            await self.d.desired.set(sid, True, new_operation_id())
        state = self.d.observed.state(sid)
        if state.container_id == c.id and state.ready:
            await self.d.observed.change(sid, phase="ready", running=True, host_port=c.host_port)
        else:
            self._ops.watch(sid, c)

    async def _start(self, action: Start) -> None:
        """Start now, or once the backoff after a crash (or a failed start) is over."""
        sid, now = action.service_id, time.monotonic()
        dead = action.previous if action.crashed else None
        record = await self._crashed(sid, dead, now) if dead is not None else self._ops.backoff.get(sid)
        if record is not None and now < record.next_start_at:
            if self._wake_at is None or record.next_start_at < self._wake_at:
                self._wake_at = record.next_start_at
            return
        if self._ops.start_for_reconcile(sid) and dead is not None:
            state = self.d.observed.state(sid)
            await self.d.observed.change(sid, restarts=state.restarts + 1)

    async def _crashed(self, sid: str, dead: ContainerInfo, now: float) -> Backoff:
        """The backoff after the service's dead container; a crash not seen before is recorded and reported."""
        settings = self.d.settings
        old = self._ops.backoff.get(sid)
        record = after_crash(old, dead.id, now, settings.crash_backoff_s, settings.crash_backoff_max_s)
        if record is not old:
            self._ops.backoff[sid] = record
            await self._record_crash(sid, dead, record.next_start_at - now, record.crashloop)
        return record

    async def _record_crash(self, sid: str, container: ContainerInfo, delay_s: float, crashloop: bool) -> None:
        status = await self.d.driver.status(container.id)
        code = status.exit_code if status is not None else None
        tail = await self.d.driver.logs_tail(container.id, LOG_TAIL_LINES)
        if self._taken_over(sid):
            return  # a command took the service over meanwhile (a stop, a restart): the state is its
        what = "crash loop" if crashloop else "crashed"
        message = f"Service {sid} {what}: exit code {code}; restarting in {delay_s:.0f} s."
        logger.warning("%s", message)
        phase = "crashloop" if crashloop else "failed"
        await self.d.observed.change(
            sid,
            phase=phase,
            **NOT_RUNNING,
            container_id=container.id,
            error_code=Code.SERVICE_CRASHED,
            last_error=message,
            exit_code=code,
            log_tail=tail,
        )
        await self.d.events.publish(
            new_operation_id(), sid, "reconcile", "state", phase=phase, status=what, message=message, exit_code=code
        )

    async def _idle(self, action: Idle) -> None:
        sid, kept = action.service_id, action.container
        state = self.d.observed.state(sid)
        keep = state.phase in ("failed", "crashloop") or (state.phase == "pulling" and sid in self._ops.pulling)
        phase = state.phase if keep else "stopped"
        await self.d.observed.change(
            sid,
            phase=phase,
            **NOT_RUNNING,
            container_id=kept.id if kept is not None and phase != "stopped" else None,
            volume_name=None,
            gpus=[],
        )

    async def _forget(self, known: Known, containers: list[ContainerInfo]) -> None:
        """Drop observed state of services that left the catalog and have nothing left on the host."""
        if self.d.catalog.meta is None:
            return  # no catalog yet: nothing to compare with
        owned = {owner(c, known, self.d.instance, self.d.reclaim_home) for c in containers}
        for sid, _ in self.d.observed.items():
            if sid not in known and sid not in owned and not self.d.desired.wants_running(sid):
                if sid not in self._ops.busy():
                    await self.d.observed.delete(sid)
