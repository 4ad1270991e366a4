"""Incremental server-sent-events reader for aiohttp responses (records when each event arrived)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp


@dataclass(frozen=True)
class SseEvent:
    event: str
    data: str
    arrived: float  # time.monotonic() when the event's terminating blank line was read
    id: str = ""


async def iter_sse(resp: aiohttp.ClientResponse) -> AsyncIterator[SseEvent]:
    """Yield events as soon as each one is complete (reads line by line, never the whole body)."""
    event, event_id = "message", ""
    data: list[str] = []
    while True:
        raw = await resp.content.readline()
        if not raw:
            break
        line = raw.decode("utf-8").rstrip("\r\n")
        if line == "":
            if data:
                yield SseEvent(event=event, data="\n".join(data), arrived=time.monotonic(), id=event_id)
            event, event_id, data = "message", "", []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            event = value
        elif field == "data":
            data.append(value)
        elif field == "id":
            event_id = value
    if data:
        yield SseEvent(event=event, data="\n".join(data), arrived=time.monotonic(), id=event_id)
