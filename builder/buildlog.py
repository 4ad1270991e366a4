"""A build's log and state events: each line and state change is an event on the event stream (so /v1/events and
/v1/packages/<id>/logs?follow=1 show it live); the whole log is stored in OBJ_LOGS when the attempt ends."""

from __future__ import annotations

import logging
import time
from typing import Any

import nats.errors
from nats.js import JetStreamContext

from common import codec, subjects
from common.messages import PackageEvent, PackageStage, PackageStatus

logger = logging.getLogger(__name__)

PUBLISH_TIMEOUT_S = 5.0
MAX_KEPT_LINES = 20_000
"""A runaway build log keeps its first and last lines in the stored copy (every line was still an event)."""
MAX_LINE_CHARS = 4000


class BuildLog:
    def __init__(self, js: JetStreamContext, package_id: str, attempt: int) -> None:
        self._js = js
        self.package_id = package_id
        self.attempt = attempt
        self.stage: PackageStage = "building"
        self.events: list[PackageEvent] = []

    async def line(self, text: str) -> None:
        for part in text.splitlines() or [""]:
            await self._emit("log", line=part[:MAX_LINE_CHARS])

    async def state(
        self, status: PackageStatus, stage: PackageStage, error_code: str | None = None, message: str | None = None
    ) -> None:
        self.stage = stage
        await self._emit("state", status=status, error_code=error_code, message=message)

    async def _emit(self, type_: str, **fields: Any) -> None:
        event = PackageEvent(
            package_id=self.package_id,
            attempt=self.attempt,
            type=type_,  # type: ignore[arg-type]
            at=time.time(),
            stage=self.stage,
            **fields,
        )
        self._keep(event)
        subject = subjects.package_event(self.package_id, type_)
        try:
            await self._js.publish(subject, codec.encode(event), timeout=PUBLISH_TIMEOUT_S)
        except (nats.errors.Error, TimeoutError) as exc:
            logger.warning("event %s not published: %s", subject, exc)

    def _keep(self, event: PackageEvent) -> None:
        if len(self.events) >= MAX_KEPT_LINES:
            del self.events[MAX_KEPT_LINES // 2]
        self.events.append(event)

    def ndjson(self) -> bytes:
        """The stored form: one PackageEvent per line."""
        return b"".join(codec.encode(event) + b"\n" for event in self.events)
