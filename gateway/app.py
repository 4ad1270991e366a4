"""The HTTP application: create_app(settings, nc) builds it; tests and the component both call it."""

from __future__ import annotations

from aiohttp import web
from nats.aio.client import Client as NATS

from common.settings import Settings
from gateway.keys import NC, SETTINGS
from gateway.routes import health


def create_app(settings: Settings, nc: NATS) -> web.Application:
    app = web.Application(client_max_size=settings.max_body_bytes)
    app[SETTINGS] = settings
    app[NC] = nc
    app.add_routes(health.routes)
    return app
