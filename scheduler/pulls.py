"""Image pulls: one pull per image however many clients ask, with bytes-weighted monotonic progress events.

Order: ``downloaded`` is true in KV before the "succeeded" event (status "Download complete") is published,
because Prem App reloads the listing when it sees that status. A failed pull ends with a "failed" event,
never "Download complete".
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from common.errors import AppError, Code
from common.fit import check_disk
from common.messages import CancelPull, EventType, OperationAccepted, PullImage, ServiceState
from scheduler.deps import Deps
from scheduler.events import new_operation_id
from scheduler.operations import Operations
from scheduler.pull_progress import PullProgress
from scheduler.state import normalize_ref

logger = logging.getLogger(__name__)

PROGRESS_INTERVAL_S = 0.1
"""At most this often a progress event for bytes (Docker sends one per chunk); a layer's new status goes at once."""


@dataclass
class _Pull:
    id: str
    ref: str
    service_ids: list[str]
    progress: PullProgress = field(default_factory=PullProgress)
    task: asyncio.Task[None] | None = None
    cancelled: bool = False


class Pulls:
    def __init__(self, deps: Deps, ops: Operations, images_changed: Callable[[], Awaitable[None]]) -> None:
        self.d = deps
        self._ops = ops
        self._images_changed = images_changed
        self._by_ref: dict[str, _Pull] = {}

    def in_flight(self) -> int:
        return len(self._by_ref)

    async def pull(self, cmd: PullImage) -> OperationAccepted:
        sid = cmd.service_id
        manifest = self._ops.manifest(sid)
        image, _ = self._ops.image_for(manifest)
        ref = normalize_ref(image.image)
        if (running := self._by_ref.get(ref)) is not None:
            if sid not in running.service_ids:
                running.service_ids.append(sid)
                self._ops.pulling.add(sid)
                if ref in self._by_ref:  # still in flight: the joiner shows "pulling" too
                    await self.d.observed.update(sid, _phase(sid, pulling=True))
            return OperationAccepted(operation_id=running.id, service_id=sid, kind="pull", joined=True)
        state = self.d.observed.state(sid)
        facts = self.d.facts()
        already_here = state.downloaded and not state.needs_update
        if facts is not None and not cmd.force and not already_here:
            check_disk(manifest, facts)
        pull = _Pull(new_operation_id(), ref, [sid])
        self._by_ref[ref] = pull
        pull.task = self.d.tasks.spawn(self._run(pull), f"pull {ref}")
        return OperationAccepted(operation_id=pull.id, service_id=sid, kind="pull")

    # --- cli: pull cancel (issue 12) ---
    async def cancel(self, cmd: CancelPull) -> OperationAccepted:
        """Stop the pull the service is part of (for every service that joined it); answers once it ended."""
        pull = next((p for p in self._by_ref.values() if cmd.service_id in p.service_ids), None)
        if pull is None or pull.task is None:
            self._ops.manifest(cmd.service_id)  # an unknown service is service.not_found, not "no pull"
            raise AppError(Code.PULL_NOT_IN_FLIGHT, f"no download of {cmd.service_id} is in progress")
        pull.cancelled = True
        pull.task.cancel()
        await asyncio.wait([pull.task], timeout=self.d.settings.request_timeout_s / 2)
        return OperationAccepted(operation_id=pull.id, service_id=cmd.service_id, kind="pull")

    async def _publish(self, pull: _Pull, type_: EventType, **fields: Any) -> None:
        for sid in list(pull.service_ids):
            await self.d.events.publish(pull.id, sid, "pull", type_, **fields)

    async def _set_pulling(self, pull: _Pull, pulling: bool) -> None:
        sids = list(pull.service_ids)
        # In memory first: should a KV write fail, reconcile still sees no pull in flight and resets the phase.
        if pulling:
            self._ops.pulling.update(sids)
        else:
            self._ops.pulling.difference_update(sids)
        for sid in sids:
            await self.d.observed.update(sid, _phase(sid, pulling))

    async def _run(self, pull: _Pull) -> None:
        """The pull's task: it always ends with one ``succeeded`` or ``failed`` event, whatever broke."""
        try:
            await self._publish(pull, "accepted", status="accepted")
            await self._set_pulling(pull, True)
            await self._stream(pull)
            if await self.d.driver.image(pull.ref) is None:
                raise AppError(Code.PULL_FAILED, f"pull {pull.ref}: the image is not there after the pull")
            await self._images_changed()  # downloaded=true in KV before the event that announces it
        except asyncio.CancelledError:
            if not pull.cancelled:
                raise  # the scheduler stops: the pull dies with it (the gateway sees the new instance)
            message = "the download was cancelled"
            await self._end(pull, "failed", status="Cancelled", error_code=Code.PULL_CANCELLED, message=message)
        except AppError as exc:
            await self._end(pull, "failed", status="Error", error_code=exc.code, message=exc.message)
        except Exception:  # boundary: the pull must end with an event, whatever broke
            logger.exception("pull of %s failed", pull.ref)
            await self._end(pull, "failed", status="Error", error_code=Code.INTERNAL, message="internal error")
        else:
            total = pull.progress.snapshot().bytes_total
            done = {"percentage": 100.0, "bytes_done": total, "bytes_total": total}
            await self._end(pull, "succeeded", status="Download complete", **done)

    async def _end(self, pull: _Pull, type_: EventType, **fields: Any) -> None:
        """No more joiners; the services leave the "pulling" phase; then the last event, even if KV failed."""
        self._by_ref.pop(pull.ref, None)
        try:
            await self._set_pulling(pull, False)
        finally:
            await self._publish(pull, type_, **fields)

    async def _stream(self, pull: _Pull) -> None:
        last = 0.0
        async for event in self.d.driver.pull(pull.ref):
            now = time.monotonic()
            moved = pull.progress.feed(event, now)
            if moved and (pull.progress.transition or now - last >= PROGRESS_INTERVAL_S):
                last = now
                snap = pull.progress.snapshot()
                await self._publish(
                    pull,
                    "progress",
                    status=snap.status,
                    percentage=snap.percentage,
                    bytes_done=snap.bytes_done,
                    bytes_total=snap.bytes_total,
                    rate_bps=snap.rate_bps,
                    layers=snap.layers,
                )


def _phase(sid: str, pulling: bool) -> Callable[[ServiceState | None], ServiceState]:
    """The observed-state transition into (or out of) the "pulling" phase; other phases are left alone."""

    def fn(current: ServiceState | None) -> ServiceState:
        base = current or ServiceState(service_id=sid)
        if pulling and base.phase in ("stopped", "failed"):
            return msgspec.structs.replace(base, phase="pulling", updated_at=time.time())
        if not pulling and base.phase == "pulling":
            return msgspec.structs.replace(base, phase="stopped", updated_at=time.time())
        return base

    return fn
