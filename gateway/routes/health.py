"""Health (premd's ``GET /v1/``) and readiness (bus connection and which components answer)."""

from __future__ import annotations

import asyncio

import msgspec
from aiohttp import web

from common import subjects
from gateway.apidoc import documented
from gateway.errors import json_response
from gateway.keys import NC
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


class _Pong(msgspec.Struct):
    name: str
    id: str
    version: str


@routes.get("/readyz")
@documented(
    "Readiness: the bus is connected and every component answers (503 otherwise)",
    errors={503: '{"ready": false, "bus": ..., "components": {name: bool}}'},
)
async def ready(request: web.Request) -> web.Response:
    """Ready when the bus is connected and every component answered $SRV.PING within a short window."""
    nc = request.app[NC]
    seen: dict[str, list[str]] = {name: [] for name in subjects.COMPONENTS}
    if nc.is_connected:
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox)
        await nc.publish(subjects.SRV_PING, b"", reply=inbox)
        try:
            async with asyncio.timeout(PING_WINDOW_S):
                async for msg in sub.messages:
                    try:
                        pong = msgspec.json.decode(msg.data, type=_Pong)
                    except msgspec.DecodeError:
                        continue
                    seen.setdefault(pong.name, []).append(pong.id)
                    if all(seen[name] for name in subjects.COMPONENTS):
                        break
        except TimeoutError:
            pass
        finally:
            await sub.unsubscribe()
    components = {name: bool(ids) for name, ids in seen.items()}
    is_ready = nc.is_connected and all(components.values())
    body = {"ready": is_ready, "bus": "connected" if nc.is_connected else "disconnected", "components": components}
    return web.json_response(body, status=200 if is_ready else 503)
