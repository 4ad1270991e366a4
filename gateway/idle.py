"""Idle stop: a service premd started for a request is stopped once no request has reached it for a while.

Where the clock lives: here, in the gateway. The gateway is the only component that sees requests, and
it sees each one whole: a chat that streams for ten minutes is activity until its last byte, which no
periodic report to another component could say as exactly. Counting costs a dict update per request
and no bus traffic. The decision stays with the scheduler: the gateway sends an ordinary
``StopService`` with ``only_on_demand``, and the scheduler refuses it (nothing changed) unless the
service still runs because a request started it (a user's start since makes it the user's) and no
operation is in flight on it. The stop is an ordinary stop operation with its event (status "idle for
N s").

"Started on demand" is the scheduler's fact (``DesiredState.on_demand`` in KV), so it survives restarts;
the clock does not: a restarted gateway starts each on-demand service's idle period afresh, which only
ever keeps a service up longer, never stops one early. Per-request overrides (header
``X-Premd-Keep-Alive``) are kept per service until it stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator

from aiohttp import web
from aiohttp.typedefs import Handler

from common import bus, subjects
from common.errors import AppError, Code
from common.messages import ServiceStopped, StopService
from gateway.errors import ApiError
from gateway.keys import NC, SETTINGS, VIEW
from gateway.loading import LOADING, loaded

logger = logging.getLogger(__name__)

KEEP_ALIVE_HEADER = "X-Premd-Keep-Alive"
NEVER = math.inf
"""Keep-alive of a service that is never stopped for idleness."""
MAX_TICK_S = 5.0
"""Longest the idle loop sleeps without looking (services that became on demand meanwhile are seen then)."""
RETRY_S = 5.0
"""After a failed idle stop (bus away), the next attempt comes this much later."""

_DURATION = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$", re.IGNORECASE)
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def keep_alive_seconds(value: float) -> float:
    """A setting or header value in seconds: negative (or NaN, from a setting) means never (``NEVER``)."""
    return value if value >= 0 else NEVER


def parse_keep_alive(text: str) -> float:
    """``X-Premd-Keep-Alive``: ``300``, ``300s``, ``5m``, ``1h``, ``0`` (stop after this request), ``-1`` (never).

    Raises ValueError with the reason.
    """
    found = _DURATION.match(text)
    if found is None:
        raise ValueError(f"{KEEP_ALIVE_HEADER}: {text[:40]!r} is not a duration (e.g. 300, 90s, 5m, 1h, -1)")
    number = float(found.group(1))
    unit = (found.group(2) or "s").lower()
    return keep_alive_seconds(number * _UNIT_S[unit])


class IdleClock:
    """Per service: requests in flight, when the last one ended, the keep-alive asked for. Pure bookkeeping."""

    def __init__(self, default_s: float, now: Callable[[], float] = time.monotonic) -> None:
        self.default_s = keep_alive_seconds(default_s)
        self._now = now
        self._in_flight: dict[str, int] = {}
        self._last: dict[str, float] = {}
        self._keep_alive: dict[str, float] = {}
        self.changed = asyncio.Event()
        """Set when a request ends (a deadline may have moved closer): the idle loop looks again."""

    def begin(self, service_id: str, keep_alive_s: float | None = None) -> None:
        self._in_flight[service_id] = self._in_flight.get(service_id, 0) + 1
        self._last[service_id] = self._now()
        if keep_alive_s is not None:
            self._keep_alive[service_id] = keep_alive_s

    def end(self, service_id: str) -> None:
        left = self._in_flight.get(service_id, 0) - 1
        if left > 0:
            self._in_flight[service_id] = left
        else:
            self._in_flight.pop(service_id, None)
        self._last[service_id] = self._now()
        self.changed.set()

    @contextlib.contextmanager
    def active(self, service_id: str, keep_alive_s: float | None = None) -> Iterator[None]:
        """A request reaching the service: activity from its first to its last byte."""
        self.begin(service_id, keep_alive_s)
        try:
            yield
        finally:
            self.end(service_id)

    def in_flight(self, service_id: str) -> int:
        return self._in_flight.get(service_id, 0)

    def keep_alive_of(self, service_id: str) -> float:
        return self._keep_alive.get(service_id, self.default_s)

    def forget(self, service_id: str) -> None:
        """The service stopped: its next run starts with the default keep-alive and a fresh clock."""
        self._last.pop(service_id, None)
        self._keep_alive.pop(service_id, None)

    def postpone(self, service_id: str, seconds: float) -> None:
        """Look at the service again ``seconds`` from now at the earliest (after a refused or failed stop)."""
        self._last[service_id] = self._now() - self.keep_alive_of(service_id) + seconds

    def due(self, candidates: Iterable[str]) -> tuple[list[tuple[str, float]], float | None]:
        """Of the services running on demand: those idle past their keep-alive (with the idle seconds), and
        the seconds until the next one would be. A candidate seen for the first time starts its clock now.
        """
        now = self._now()
        due: list[tuple[str, float]] = []
        wait: float | None = None
        current = set()
        for service_id in candidates:
            current.add(service_id)
            if self._in_flight.get(service_id):
                continue
            last = self._last.setdefault(service_id, now)
            keep = self.keep_alive_of(service_id)
            if keep == NEVER:
                continue
            idle = now - last
            if idle >= keep:
                due.append((service_id, idle))
            else:
                wait = keep - idle if wait is None else min(wait, keep - idle)
        for service_id in [s for s in self._last if s not in current and not self._in_flight.get(s)]:
            self.forget(service_id)  # no longer on demand (stopped, or a user's now)
        return due, wait


IDLE = web.AppKey("idle_clock", IdleClock)


def on_demand_running(app: web.Application) -> list[str]:
    """Services that run because a request started them (the scheduler's record) and are ready."""
    view = app[VIEW]
    found = []
    for service_id, desired in view.desired.values.items():
        state = view.state(service_id)
        if desired.running and desired.on_demand and state is not None and state.phase == "ready":
            found.append(service_id)
    return found


async def stop_idle(app: web.Application, service_id: str, idle_s: float) -> bool:
    """Ask the scheduler for an idle stop; True when the service was stopped."""
    settings = app[SETTINGS]
    command = StopService(service_id=service_id, only_on_demand=True, reason=f"idle for {idle_s:.0f} s")
    try:
        await bus.request(app[NC], subjects.SCHEDULER_STOP, command, ServiceStopped, timeout=settings.request_timeout_s)
    except AppError as exc:
        if exc.code in (Code.STATE_CONFLICT, Code.SERVICE_NOT_RUNNING):
            logger.debug("idle stop of %s refused: %s", service_id, exc.message)
        else:
            logger.warning("idle stop of %s failed: %s", service_id, exc.message)
        return False
    logger.info("stopped %s: idle for %.0f s", service_id, idle_s)
    return True


class IdleStopper:
    """The loop: sleep until the next service would be idle (or a request ended), stop what is due."""

    def __init__(self, app: web.Application, stop: Callable[[web.Application, str, float], Awaitable[bool]]) -> None:
        self.app = app
        self.clock = app[IDLE]
        self._stop = stop
        self.stopping: dict[str, asyncio.Event] = {}
        """Services being stopped for idleness: a request for one waits for the stop before starting it again."""

    async def run(self) -> None:
        # The services started on demand are the view's (gateway/loading.py); a view that failed to load
        # stops the gateway itself.
        await asyncio.wait({self.app[LOADING]})
        if not loaded(self.app):
            return
        while True:
            due, wait = self.clock.due(on_demand_running(self.app))
            for service_id, idle_s in due:
                await self._stop_one(service_id, idle_s)
            if due:
                continue
            self.clock.changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(wait if wait is not None else NEVER, MAX_TICK_S)):
                    await self.clock.changed.wait()

    async def _stop_one(self, service_id: str, idle_s: float) -> None:
        if self.clock.in_flight(service_id):  # a request began while an earlier stop of this round was awaited
            return
        done = self.stopping[service_id] = asyncio.Event()
        try:
            await self._stop_and_settle(service_id, idle_s)
        finally:
            del self.stopping[service_id]
            done.set()

    async def _stop_and_settle(self, service_id: str, idle_s: float) -> None:
        stopped = await self._stop(self.app, service_id, idle_s)
        if stopped:
            self.clock.forget(service_id)
            # The scheduler wrote "stopped" before replying; until this view has it, the service would look
            # ready to a request arriving now (which waits on ``stopping`` until then).
            with contextlib.suppress(TimeoutError):
                await self.app[VIEW].observed.wait_for(
                    lambda values: (s := values.get(service_id)) is None or s.phase != "ready",
                    timeout=self.app[SETTINGS].request_timeout_s,
                )
        else:
            self.clock.postpone(service_id, RETRY_S)

    async def settled(self, service_id: str, timeout: float) -> None:
        """Return once no idle stop of the service is in flight (bounded by ``timeout``)."""
        done = self.stopping.get(service_id)
        if done is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await done.wait()


STOPPER = web.AppKey("idle_stopper", IdleStopper)


def being_stopped(app: web.Application, service_id: str) -> bool:
    """An idle stop of the service is in flight: a request must take the route that waits for it."""
    stopper = app.get(STOPPER)
    return stopper is not None and service_id in stopper.stopping


def install(app: web.Application) -> None:
    """The idle clock, its loop (after the view is up) and the /proxy activity middleware."""
    app[IDLE] = IdleClock(app[SETTINGS].idle_stop_s)
    app.cleanup_ctx.append(idle_ctx)
    app.middlewares.append(proxy_activity_middleware)


async def idle_ctx(app: web.Application) -> AsyncIterator[None]:
    stopper = app[STOPPER] = IdleStopper(app, stop_idle)
    task = asyncio.create_task(stopper.run(), name="idle stop")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def keep_alive_of(request: web.Request) -> float | None:
    """The request's ``X-Premd-Keep-Alive`` in seconds, None when absent; 400 (ApiError) when malformed."""
    raw = request.headers.get(KEEP_ALIVE_HEADER)
    if raw is None:
        return None
    try:
        return parse_keep_alive(raw)
    except ValueError as exc:
        raise ApiError(str(exc), 400, Code.KEEP_ALIVE_INVALID) from None


@web.middleware
async def proxy_activity_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Requests through ``/proxy/<service id>`` reach the service too: they count as activity."""
    service_id = request.match_info.get("service_id") if request.path.startswith("/proxy/") else None
    if service_id is None:
        return await handler(request)
    with request.app[IDLE].active(service_id):
        return await handler(request)
