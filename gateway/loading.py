"""The gateway listens before its view is loaded: ``GET /v1/`` answers at once, every other route waits for it.

Loading the KV mirrors (the catalog twice: its meta and its entries, observed state, host facts, desired
state) took about 0.35 s at 1,000 services, a third of ``premd serve``'s start-up to a healthy ``GET /v1/``
(bench/serve.py measures it; docs/performance.md has the breakdown). Health touches nothing of the view, so
it need not wait; a listing asked before the view is in must not answer an empty list, so every other
request waits (bounded) until it is. ``/readyz`` does not wait: it answers "not ready" until it is loaded.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

from common import bus
from common.errors import Code
from common.jetstream import ensure_resources
from gateway.errors import ApiError
from gateway.keys import LISTING, NC, SETTINGS, VIEW
from gateway.listing import Listing
from gateway.view import GatewayView

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

LOADING: web.AppKey[asyncio.Task[None]] = web.AppKey("view_loading")
"""The task that loads the view (VIEW); done, without an exception, once its mirrors hold the buckets' values."""
UNGATED = frozenset({"/v1/", "/readyz"})
"""Paths answered without the view: health, and readiness (which reports the loading)."""
BUS_CHECK_S = 0.05
"""While a request waits for the view, how often it looks whether the bus was lost (then it answers 503 at once)."""


async def load(view: GatewayView) -> None:
    """premd's streams and buckets ensured, then every mirror's current values in."""
    await ensure_resources(view.js)
    await view.start()


async def view_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the view loads in a task of its own, so that the server starts listening meanwhile.

    VIEW and LISTING are set at once (the application's state is frozen once it started); reading the
    view's mirrors is for requests past the gate and for what checks :func:`loaded`.
    """
    view = app[VIEW] = GatewayView(app[NC].jetstream())
    app[LISTING] = Listing(view)
    task = app[LOADING] = asyncio.create_task(load(view), name="gateway view")
    yield
    if not task.done():
        task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await view.stop()


def loaded(app: web.Application) -> bool:
    task = app.get(LOADING)
    return task is not None and task.done() and not task.cancelled() and task.exception() is None


async def until_loaded(app: web.Application) -> None:
    """Until the view is loaded (raises what failed its load); 503 at once while the bus is down, or after
    the request timeout."""
    task = app[LOADING]
    nc = app[NC]
    try:
        async with asyncio.timeout(app[SETTINGS].request_timeout_s):
            while not task.done():
                bus.require_connected(nc, "the gateway's view")
                await asyncio.wait({task}, timeout=BUS_CHECK_S)
    except TimeoutError:
        raise ApiError(
            "premd is still loading its state from the bus", 503, Code.BUS_TIMEOUT, {"Retry-After": "1"}
        ) from None
    task.result()


@web.middleware
async def view_gate_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Innermost: a request for a route (404s and 405s need nothing) waits for the view unless it is ungated."""
    app = request.app
    if not loaded(app) and request.path not in UNGATED and request.match_info.http_exception is None:
        await until_loaded(app)
    return await handler(request)
