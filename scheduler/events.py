"""Operation events: published with JetStream publish, so each lands in PREMD_EVENTS for replay."""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any

import msgspec
import nats.errors
from nats.js import JetStreamContext

from common import subjects
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


class EventPublisher:
    def __init__(self, js: JetStreamContext) -> None:
        self._js = js

    async def publish(
        self, operation_id: str, service_id: str, kind: OperationKind, type_: EventType, **fields: Any
    ) -> None:
        """Publish one event and wait for the stream's ack; a bus failure is logged, never fatal to the operation."""
        event = OperationEvent(
            operation_id=operation_id, service_id=service_id, kind=kind, type=type_, at=time.time(), **fields
        )
        subject = subjects.service_event(service_id, operation_id, type_)
        try:
            await self._js.publish(subject, msgspec.json.encode(event), timeout=PUBLISH_TIMEOUT_S)
        except (nats.errors.Error, TimeoutError) as exc:
            logger.warning("event %s not published: %s", subject, exc)
