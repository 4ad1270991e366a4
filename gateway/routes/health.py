"""Health (premd's ``GET /v1/``) and readiness (bus connection and which components answer)."""

from __future__ import annotations

from aiohttp import web

from common import bus, subjects
from common.messages import ServiceIdentity
from gateway.apidoc import documented
from gateway.errors import json_response
from gateway.keys import NC, VIEW
from gateway.loading import loaded
from gateway.schemas import HealthResponse

routes = web.RouteTableDef()

PING_WINDOW_S = 0.5


@routes.get("/v1/")
@documented(
    "Health: premd answers (touches nothing else; Prem App's check, reached by following GET /v1)",
    response=HealthResponse,
)
async def health(request: web.Request) -> web.Response:
    return json_response(HealthResponse(status=True))


@routes.get("/readyz")
@documented(
    "Readiness: the bus is connected, the gateway's view is loaded and every component answers (503 otherwise)",
    errors={503: '{"ready": false, "bus": ..., "view": "loading", "components": {name: bool}, "docker": ...}'},
)
async def ready(request: web.Request) -> web.Response:
    """Ready when the bus is connected, the view is loaded (gateway/loading.py: until then every route but
    health waits) and every component answered $SRV.PING within a short window."""
    nc = request.app[NC]
    view_loaded = loaded(request.app)  # as when asked: the pings below take up to PING_WINDOW_S
    seen: dict[str, list[str]] = {name: [] for name in subjects.COMPONENTS}

    def everyone(pongs: list[ServiceIdentity]) -> bool:
        return {pong.name for pong in pongs} >= set(subjects.COMPONENTS)

    for pong in await bus.gather(nc, subjects.SRV_PING, ServiceIdentity, PING_WINDOW_S, everyone):
        seen.setdefault(pong.name, []).append(pong.id)
    components = {name: bool(ids) for name, ids in seen.items()}
    is_ready = nc.is_connected and view_loaded and all(components.values())
    body = {
        "ready": is_ready,
        "bus": "connected" if nc.is_connected else "disconnected",
        "view": "loaded" if view_loaded else "loading",
        "components": components,
        "docker": _docker(request),
    }
    return web.json_response(body, status=200 if is_ready else 503)


def _docker(request: web.Request) -> str:
    """The Docker engine as the scheduler last saw it: reported, not required (premd lists services without it)."""
    facts = request.app[VIEW].host if loaded(request.app) else None
    if facts is None:
        return "unknown"
    return "available" if facts.docker_available else "unavailable"
