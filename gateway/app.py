"""The HTTP application: create_app(settings, nc) builds it; tests and the component both call it."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web
from nats.aio.client import Client as NATS

from common.jetstream import ensure_resources
from common.settings import Settings
from gateway.keys import NC, SETTINGS, VIEW
from gateway.routes import health
from gateway.view import GatewayView


async def _view_ctx(app: web.Application) -> AsyncIterator[None]:
    js = app[NC].jetstream()
    await ensure_resources(js)
    view = GatewayView(js)
    await view.start()
    app[VIEW] = view
    yield
    await view.stop()


def create_app(settings: Settings, nc: NATS) -> web.Application:
    app = web.Application(client_max_size=settings.max_body_bytes)
    app[SETTINGS] = settings
    app[NC] = nc
    app.cleanup_ctx.append(_view_ctx)
    app.add_routes(health.routes)
    # edge: security, CORS, metrics, proxy, OpenAI routes, OpenAPI (gateway/edge.py install(app)).
    return app
