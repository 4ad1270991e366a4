"""The HTTP application: create_app(settings, nc) builds it; tests and the component both call it."""

from __future__ import annotations

import weakref
from collections.abc import AsyncIterator

from aiohttp import web
from nats.aio.client import Client as NATS

from common.jetstream import ensure_resources
from common.settings import Settings
from gateway import edge
from gateway.errors import error_middleware, slash_redirect_middleware
from gateway.keys import LISTING, NC, SETTINGS, STREAMS, VIEW
from gateway.listing import Listing
from gateway.routes import downloads, events, health, interfaces, lifecycle, packages, registries, services, stats
from gateway.routes.cli import TABLES as CLI_ROUTES
from gateway.streams import close_streams
from gateway.view import GatewayView


async def _view_ctx(app: web.Application) -> AsyncIterator[None]:
    js = app[NC].jetstream()
    await ensure_resources(js)
    view = GatewayView(js)
    await view.start()
    app[VIEW] = view
    app[LISTING] = Listing(view)
    yield
    await view.stop()


def create_app(settings: Settings, nc: NATS) -> web.Application:
    app = web.Application(client_max_size=settings.max_body_bytes)
    app[SETTINGS] = settings
    app[NC] = nc
    app[STREAMS] = weakref.WeakSet()
    app.cleanup_ctx.append(_view_ctx)
    app.on_shutdown.append(close_streams)
    for table in (health, interfaces, registries, services, downloads, lifecycle, stats, events):
        app.add_routes(table.routes)
    # --- packages: pipeline (issue 8) ---
    app.cleanup_ctx.append(packages.packages_ctx)
    app.add_routes(packages.routes)
    for routes in CLI_ROUTES:  # cli (issue 12)
        app.add_routes(routes)
    # The edge: security, CORS, metrics, the proxy, OpenAI routes, OpenAPI.
    edge.install(app)
    # Innermost, after the edge's middlewares: their CORS headers and auth apply to our errors and redirects.
    app.middlewares.extend([slash_redirect_middleware, error_middleware])
    return app
