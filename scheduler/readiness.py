"""Is a started service ready? Probes on its published port, and the wait loop with a deadline.

Rule (also in docs/architecture.md, "Starting a service"):
- HTTP services: ``GET /v1/`` answers 2xx, or 400 as Prem App accepts. A peer that accepts the
  connection and answers something that is not HTTP is a non-HTTP service that is up: ready.
- A service answering 404 to ``GET /v1/`` (a custom service premd never required it of) is checked by
  TCP instead: it speaks HTTP, just not that route.
- A manifest's ``readinessCheck`` (``http`` / ``tcp``) picks the check: ``http`` is strict (no fallback).
- ``skipHealthCheck`` manifests and vector stores (redis, postgres, qdrant, weaviate: native protocols,
  no ``/v1/``): TCP. Connecting is not enough, because Docker's userland proxy accepts on the host port
  even when nothing listens in the container (it then closes at once): the connection must stay
  open for a moment, or the service must say something.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Literal

from common.manifest import Manifest

PROBE_TIMEOUT_S = 2.0
TCP_HOLD_S = 0.25
"""How long a bare TCP connection must stay open to count as a listening service."""
FAST_INTERVAL_S = 0.025
"""Poll interval while a service is young (most come up within seconds: notice it within 25 ms)."""
FAST_PHASE_S = 5.0
MAX_INTERVAL_S = 0.5
ALIVE_CHECK_S = 0.5
"""How often the container's state is looked at while waiting (an exit ends the wait early)."""

NON_HTTP_INTERFACES = frozenset({"vector-store"})


Check = Literal["http", "http-or-tcp", "tcp"]


def uses_http(manifest: Manifest) -> bool:
    return not manifest.skip_health_check and not NON_HTTP_INTERFACES.intersection(manifest.interfaces)


def readiness_check(manifest: Manifest) -> Check:
    """The manifest's ``readinessCheck`` when it has one; else HTTP with the TCP fallback, or TCP (see above)."""
    if manifest.readiness_check is not None:
        return manifest.readiness_check
    return "http-or-tcp" if uses_http(manifest) else "tcp"


async def _read_some(reader: asyncio.StreamReader, want: int) -> bytes:
    data = b""
    while len(data) < want:
        chunk = await reader.read(want - len(data))
        if not chunk:
            break
        data += chunk
    return data


async def probe_http(host: str, port: int, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """``GET /v1/`` answers 2xx or 400 (or the peer speaks something that is not HTTP)."""
    answer = await _get_v1(host, port, timeout)
    return answer if isinstance(answer, bool) else _accepted(answer)


async def probe_http_or_tcp(host: str, port: int, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """As ``probe_http``, but a 404 (no ``/v1/`` route) hands over to the TCP check."""
    answer = await _get_v1(host, port, timeout)
    if isinstance(answer, bool):
        return answer
    if answer == 404:
        return await probe_tcp(host, port, timeout)
    return _accepted(answer)


def _accepted(status: int) -> bool:
    return 200 <= status < 300 or status == 400


async def _get_v1(host: str, port: int, timeout: float) -> bool | int:
    """The status ``GET /v1/`` answers; True for a peer that is up and speaks no HTTP, False when not up."""
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port)
            try:
                writer.write(f"GET /v1/ HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode())
                await writer.drain()
                head = await _read_some(reader, 12)
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
    except (OSError, TimeoutError):
        return False
    if not head:
        return False  # accepted then closed: the userland proxy with nothing behind it
    if not head.startswith(b"HTTP/"):
        return True
    try:
        return int(head.split(b" ")[1][:3])
    except (IndexError, ValueError):
        return False


async def probe_tcp(host: str, port: int, timeout: float = PROBE_TIMEOUT_S) -> bool:
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port)
    except (OSError, TimeoutError):
        return False
    try:
        async with asyncio.timeout(TCP_HOLD_S):
            data = await reader.read(1)
        return bool(data)
    except TimeoutError:
        return True  # still open and silent: something listens (redis, postgres wait for the client)
    except OSError:
        return False
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


PROBES: dict[Check, Callable[[str, int], Awaitable[bool]]] = {
    "http": probe_http,
    "http-or-tcp": probe_http_or_tcp,
    "tcp": probe_tcp,
}

Outcome = Literal["ready", "exited", "timeout"]


async def wait_ready(
    probe: Callable[[], Awaitable[bool]],
    alive: Callable[[], Awaitable[bool]],
    deadline_s: float,
    clock: Callable[[], float] = time.monotonic,
) -> Outcome:
    """Probe with a growing interval until ready, the container stops (``alive`` False) or the deadline."""
    started = clock()
    deadline = started + deadline_s
    interval = FAST_INTERVAL_S
    next_alive_check = started
    while True:
        if await probe():
            return "ready"
        now = clock()
        if now >= next_alive_check:
            if not await alive():
                return "exited"
            next_alive_check = now + ALIVE_CHECK_S
        if now >= deadline:
            return "timeout"
        await asyncio.sleep(min(interval, max(deadline - now, 0.0)))  # poll interval, not a fixed wait
        if now - started >= FAST_PHASE_S:
            interval = min(interval * 1.5, MAX_INTERVAL_S)
