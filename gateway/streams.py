"""Long-lived responses (SSE, NDJSON, requests waiting on an operation): their channels and their end at shutdown.

A channel is fed by a NATS subscription callback and read by one handler. Every open channel is in the app's
STREAMS WeakSet; on shutdown the app closes them all, so each handler writes its last line and returns
before the server stops waiting for handlers.
"""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Generic, TypeVar

from aiohttp import web

from gateway.keys import STREAMS

T = TypeVar("T")

PING_INTERVAL_S = 15.0
"""sse-starlette's default keep-alive interval, which premd used."""
CHANNEL_SIZE = 1024


class Closed(Exception):
    """The channel was closed: the gateway is shutting down."""


class Channel(Generic[T]):
    """A bounded queue between a subscription callback and one handler; close() ends the handler's reads."""

    def __init__(self, maxsize: int = CHANNEL_SIZE) -> None:
        self._queue: asyncio.Queue[T | None] = asyncio.Queue(maxsize)
        self.closed = False

    async def put(self, item: T) -> None:
        if not self.closed:
            await self._queue.put(item)

    def offer(self, item: T) -> None:
        """Put without waiting; dropped when the channel is full."""
        if not self.closed:
            try:
                self._queue.put_nowait(item)
            except asyncio.QueueFull:
                pass

    def close(self) -> None:
        self.closed = True
        try:
            self._queue.put_nowait(None)
        except asyncio.QueueFull:
            pass  # the reader checks ``closed`` before every read

    async def get(self, timeout: float | None = None) -> T:
        """The next item; TimeoutError after ``timeout`` s without one; Closed once the channel is closed."""
        if self.closed:
            raise Closed
        async with asyncio.timeout(timeout):
            item = await self._queue.get()
        if item is None:
            raise Closed
        return item


@contextmanager
def registered(app: web.Application, channel: Channel[T]) -> Iterator[Channel[T]]:
    """Keep ``channel`` in the app's STREAMS while the block runs, so shutdown can close it."""
    app[STREAMS].add(channel)
    try:
        yield channel
    finally:
        app[STREAMS].discard(channel)


async def close_streams(app: web.Application) -> None:
    """on_shutdown: end every open stream (each handler writes its last line and returns)."""
    streams = app[STREAMS]
    for channel in list(streams):
        channel.close()


# ---------------------------------------------------------------- SSE framing


def sse_response() -> web.StreamResponse:
    """Headers as sse-starlette sent them for premd."""
    resp = web.StreamResponse(
        headers={"Cache-Control": "no-cache", "Connection": "keep-alive", "X-Accel-Buffering": "no"},
    )
    resp.content_type = "text/event-stream"
    resp.charset = "utf-8"
    return resp


def premd_sse_message(data: bytes) -> bytes:
    """premd's framing: the JSON plus sse-starlette's extra empty data line, CRLF-separated, unnamed."""
    return b"data: " + data + b"\r\ndata: \r\n\r\n"


def premd_sse_ping() -> bytes:
    now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
    return f": ping - {now}\r\n\r\n".encode()


def sse_event(data: bytes, *, event: str | None = None, id: str | None = None) -> bytes:
    """A standard SSE message (LF-separated); multi-line data becomes several data lines."""
    head = b""
    if id is not None:
        head += b"id: " + id.encode() + b"\n"
    if event is not None:
        head += b"event: " + event.encode() + b"\n"
    body = b"".join(b"data: " + line + b"\n" for line in data.split(b"\n"))
    return head + body + b"\n"


SSE_PING = b": ping\n\n"
