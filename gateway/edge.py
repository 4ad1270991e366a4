"""The gateway's edge: what wraps premd's API routes and what sits beside them.

Middlewares, outermost first: CORS preflights, security (rebinding guard, foreign-site refusal, token),
metrics; then whatever create_app() installed (premd's error envelope, slash redirects). CORS headers on
every response, streams included, come from an ``on_response_prepare`` hook. Routes: the service proxy,
the OpenAI-compatible routes, ``/openapi.json`` and ``/docs``, ``/metrics``.
"""

from __future__ import annotations

from aiohttp import web

from gateway import cors, idle, security
from gateway.keys import SETTINGS, VIEW
from gateway.loading import loaded
from gateway.routes import metrics, openai, openapi, proxy


def install(app: web.Application) -> None:
    """Add the edge to an application built by create_app() (after SETTINGS is set, before it starts)."""
    settings = app[SETTINGS]
    policy = cors.OriginPolicy(settings.cors_origins)
    app[cors.POLICY] = policy
    app[security.GUARD] = security.Guard.from_settings(settings, policy, lambda: _service_ports(app))
    app[metrics.METRICS] = metrics.Metrics()
    app[openapi.CACHE] = openapi.SpecCache()
    app.middlewares[0:0] = [cors.preflight_middleware, security.security_middleware, metrics.metrics_middleware]
    app.on_response_prepare.append(cors.on_response_prepare)
    app.cleanup_ctx.append(proxy.client_ctx)
    app.cleanup_ctx.append(metrics.operations_ctx)
    app.add_routes(proxy.routes)
    app.add_routes(openai.routes)
    idle.install(app)  # the idle stop of services started on demand (OpenAI routes, issue 15)
    app.add_routes(openapi.routes)
    app.add_routes(metrics.routes)


def _service_ports(app: web.Application) -> set[int]:
    """Ports premd published for services (issue 10: their pages may not drive premd)."""
    if not loaded(app):  # gateway/loading.py: nothing published is known yet
        return set()
    return {s.host_port for s in app[VIEW].observed.values.values() if s.host_port}
