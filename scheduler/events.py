"""Operation events: published with JetStream publish, so each lands in PREMD_EVENTS for replay."""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from typing import Any

import nats.errors
from nats.js import JetStreamContext

from common import codec, subjects
from common.errors import Code, InvalidError
from common.messages import EventType, OperationEvent, OperationKind

logger = logging.getLogger(__name__)

PUBLISH_TIMEOUT_S = 5.0
_OPERATION_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def new_operation_id() -> str:
    return uuid.uuid4().hex


def check_operation_id(operation_id: str) -> str:
    """A client-chosen operation id becomes a subject token: keep it to safe characters."""
    if not _OPERATION_ID_RE.match(operation_id):
        raise InvalidError(Code.BAD_REQUEST, f"operation id {operation_id!r}: use 1-64 letters, digits, - or _")
    return operation_id


FINAL_ATTEMPTS = 5
"""A last event (succeeded / failed) is tried this many times; progress only once (the next one supersedes it)."""
_FINAL: frozenset[EventType] = frozenset({"succeeded", "failed"})


class EventPublisher:
    def __init__(self, js: JetStreamContext) -> None:
        self._js = js
        self.lost = 0
        """Events that could not be published (each logged as an error): readers then end from observed state."""

    async def publish(
        self, operation_id: str, service_id: str, kind: OperationKind, type_: EventType, **fields: Any
    ) -> None:
        """Publish one event and wait for the stream's ack; never fatal to the operation, never silent.

        A last event is retried (with a message id, so a retry after a lost ack is not stored twice); one that
        still fails is logged as an error and counted in ``lost``. Routes following the operation end from the
        observed state (written before the event) when its last event never comes.
        """
        event = OperationEvent(
            operation_id=operation_id, service_id=service_id, kind=kind, type=type_, at=time.time(), **fields
        )
        subject = subjects.service_event(service_id, operation_id, type_)
        payload = codec.encode(event)
        headers = {"Nats-Msg-Id": f"{operation_id}.{type_}.{event.at!r}"}
        attempts = FINAL_ATTEMPTS if type_ in _FINAL else 1
        for attempt in range(1, attempts + 1):
            try:
                await self._js.publish(subject, payload, timeout=PUBLISH_TIMEOUT_S, headers=headers)
                return
            except (nats.errors.Error, TimeoutError) as exc:
                if attempt == attempts:
                    self.lost += 1
                    logger.error("event %s lost after %d attempt(s): %s", subject, attempts, exc)
                    return
                logger.warning("event %s not published (attempt %d of %d): %s", subject, attempt, attempts, exc)
                await asyncio.sleep(min(0.2 * 2**attempt, 2.0))  # back off: the bus may be reconnecting
