"""The HTTP application: create_app(settings, nc) builds it; tests and the component both call it."""

from __future__ import annotations

import weakref

from aiohttp import web
from nats.aio.client import Client as NATS

from common.settings import Settings
from gateway import edge, loading
from gateway.errors import error_middleware, slash_redirect_middleware
from gateway.keys import NC, SETTINGS, STREAMS
from gateway.routes import downloads, events, health, interfaces, lifecycle, packages, registries, services, stats
from gateway.routes.cli import TABLES as CLI_ROUTES
from gateway.streams import close_streams


def create_app(settings: Settings, nc: NATS) -> web.Application:
    app = web.Application(client_max_size=settings.max_body_bytes)
    app[SETTINGS] = settings
    app[NC] = nc
    app[STREAMS] = weakref.WeakSet()
    # The view loads while the server listens (gateway/loading.py): every route but health waits for it.
    app.cleanup_ctx.append(loading.view_ctx)
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
    # --- start-up: listen before the view is loaded (issue 13) ---
    # Innermost: a route waiting for the view answers its refusals (503) in premd's envelope.
    app.middlewares.append(loading.view_gate_middleware)
    return app
