"""Small helpers shared by the test bed: free ports, polling with deadlines, running async code in isolation."""

from __future__ import annotations

import asyncio
import concurrent.futures
import socket
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import aiohttp

T = TypeVar("T")


class StopWaiting(Exception):
    """Raised by a poll check to abort waiting at once (e.g. the process being waited on died)."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on *host* right now (the usual small race applies)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def run_isolated(factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion on a fresh event loop in a worker thread.

    Lets sync (e.g. session-scoped) fixtures use async APIs without touching the event loop
    pytest-asyncio manages for the current test.
    """
    with concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="testbed") as pool:
        return pool.submit(asyncio.run, factory()).result()


async def wait_until(
    check: Callable[[], Awaitable[bool]],
    *,
    deadline_s: float = 30.0,
    interval: float = 0.1,
    what: str = "condition",
) -> None:
    """Poll ``await check()`` until it returns True; raise TimeoutError after *deadline_s* seconds."""
    deadline = time.monotonic() + deadline_s
    last_exc: BaseException | None = None
    while True:
        try:
            if await check():
                return
        except StopWaiting:
            raise
        except Exception as exc:
            last_exc = exc
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_exc!r})" if last_exc is not None else ""
            raise TimeoutError(f"{what} not reached within {deadline_s}s{detail}")
        await asyncio.sleep(interval)  # poll interval, not a readiness wait


async def wait_http_ok(url: str, *, deadline_s: float = 30.0, interval: float = 0.1, status: int = 200) -> None:
    """Poll ``GET url`` until it answers *status*."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2.0)) as session:

        async def check() -> bool:
            async with session.get(url) as resp:
                await resp.read()
                return resp.status == status

        await wait_until(check, deadline_s=deadline_s, interval=interval, what=f"GET {url} -> {status}")


def wait_until_sync(check: Callable[[], bool], *, timeout: float = 30.0, interval: float = 0.1, what: str = "") -> None:
    """:func:`wait_until` for code without an event loop (sync fixtures): the same deadline and error rules."""

    async def checked() -> bool:
        return check()

    run_isolated(lambda: wait_until(checked, deadline_s=timeout, interval=interval, what=what or "condition"))
