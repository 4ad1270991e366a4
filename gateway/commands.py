"""Commands to the components, and following the operations they start, for the routes.

A route that must answer after an operation's outcome subscribes to the service's events BEFORE it sends
the command (nothing can be missed), keeps only the events of the operation the reply names, and reads
the outcome's effect from the gateway view (the scheduler writes KV state before it reports the event).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import msgspec
from aiohttp import web
from nats.aio.msg import Msg

from common import bus, codec, subjects
from common.errors import AppError, Code
from common.jetstream import KVMirror
from common.messages import OperationEvent, ServiceState
from gateway.errors import ApiError
from gateway.keys import NC, SETTINGS, VIEW
from gateway.streams import Channel, registered

logger = logging.getLogger(__name__)

R = TypeVar("R", bound=msgspec.Struct)

SERVICE_NOT_FOUND = "Service not found."


async def ask(
    request: web.Request, subject: str, msg: msgspec.Struct, reply: type[R], prefix: str, timeout: float | None = None
) -> R:
    """Send a command; a refusal becomes premd's ``<prefix><reason>`` (unknown service: ``Service not found.``).

    ``timeout`` defaults to the request deadline; a command whose own work has a longer bound passes that.
    """
    try:
        wait = request.app[SETTINGS].request_timeout_s if timeout is None else timeout
        return await bus.request(request.app[NC], subject, msg, reply, wait)
    except AppError as exc:
        if exc.code == Code.SERVICE_NOT_FOUND:
            raise not_found() from None
        raise ApiError.wrap(prefix, exc) from None


async def catch_up(request: web.Request, bucket: str = subjects.KV_OBSERVED) -> None:
    """Read-your-writes: wait until the view has every write made so far to ``bucket``.

    A command that replies when done (stop, remove image, add registry) wrote KV before replying; once the
    view holds the bucket's last revision, the next listing shows the change.
    """
    view = request.app[VIEW]
    mirrors = (
        (view.catalog.meta_mirror, view.catalog.entries_mirror) if bucket == subjects.KV_CATALOG else (view.observed,)
    )
    timeout = request.app[SETTINGS].request_timeout_s
    info = await request.app[NC].jetstream(timeout=timeout).stream_info(f"KV_{bucket}")
    last = info.state.last_seq
    try:
        for mirror in mirrors:
            await _caught_up(mirror, last, timeout)
    except TimeoutError:  # the command did succeed; only the listing may lag
        logger.warning("%s: view behind the bucket's revision %d", bucket, last)


async def _caught_up(mirror: KVMirror[Any], revision: int, timeout: float) -> None:
    await mirror.wait_for(lambda _: mirror.revision >= revision, timeout)


def require_service(request: web.Request, service_id: str) -> None:
    """premd's ``Service not found.`` (400) for an id the catalog does not have."""
    if request.app[VIEW].catalog.get(service_id) is None:
        raise not_found()


def not_found() -> ApiError:
    return ApiError(SERVICE_NOT_FOUND, code=Code.SERVICE_NOT_FOUND)


Update = OperationEvent | ServiceState
"""What a route following an operation wakes up for: an event of the service, or a change of its observed state."""


class OperationFailed(Exception):
    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


@asynccontextmanager
async def watch_service(request: web.Request, service_id: str) -> AsyncIterator[Channel[Update]]:
    """The service's operation events and observed-state changes from now on, in one channel.

    Closed when the block ends, or when the gateway shuts down (reads then raise Closed).
    """
    channel: Channel[Update] = Channel()
    observed = request.app[VIEW].observed

    async def on_msg(msg: Msg) -> None:
        try:
            event = codec.decode(msg.data, OperationEvent)
        except msgspec.DecodeError:
            return
        await channel.put(event)

    def on_state(key: str, state: ServiceState | None) -> None:
        if key == service_id and state is not None:
            channel.offer(state)  # a dropped wake-up is harmless: readers re-check the view

    sub = await request.app[NC].subscribe(subjects.service_events_filter(service_id), cb=on_msg)
    observed.listeners.append(on_state)
    try:
        with registered(request.app, channel):
            yield channel
    finally:
        observed.listeners.remove(on_state)
        await sub.unsubscribe()


async def next_update(channel: Channel[Update], operation_id: str | None, timeout: float | None = None) -> Update:
    """The next state change or event of one operation (events of other operations are skipped).

    Raises OperationFailed when the operation failed, TimeoutError after ``timeout`` s without an update.
    """
    while True:
        item = await channel.get(timeout)
        if isinstance(item, ServiceState):
            if operation_id is not None and item.operation_id == operation_id and item.phase == "failed":
                raise OperationFailed(item.last_error or "failed", item.error_code)
            return item
        if item.operation_id == operation_id:
            if item.type == "failed":
                raise OperationFailed(item.message or item.status or item.error_code or "failed", item.error_code)
            return item


async def follow(
    request: web.Request,
    service_id: str,
    channel: Channel[Update],
    operation_id: str | None,
    *,
    event_done: Callable[[OperationEvent], bool],
    state_done: Callable[[ServiceState | None], bool],
    timeout: float,
) -> ServiceState | None:
    """Wait until the view satisfies ``state_done`` for the operation's sake, or the operation failed.

    "For the operation's sake": an event of the operation satisfied ``event_done``, or the observed state
    was last written by the operation. Without an operation (the command finished before replying, or it
    joined one long over) only the view is waited on. Raises OperationFailed, TimeoutError at the deadline,
    Closed at shutdown.
    """
    view = request.app[VIEW]
    op = operation_id or None
    seen = op is None
    async with asyncio.timeout(timeout):
        while True:
            state = view.state(service_id)
            ours = state is not None and op is not None and state.operation_id == op
            if ours and state is not None and state.phase == "failed":
                raise OperationFailed(state.last_error or "failed", state.error_code)
            if state_done(state) and (seen or ours):
                return state
            item = await next_update(channel, op)
            if isinstance(item, OperationEvent) and event_done(item):
                seen = True
