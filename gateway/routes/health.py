"""Health (premd's ``GET /v1/``) and readiness (bus connection and which components answer)."""

from __future__ import annotations

import asyncio

import msgspec
from aiohttp import web

from common import subjects
from gateway.keys import NC

routes = web.RouteTableDef()

PING_WINDOW_S = 0.5


@routes.get("/v1/")
async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": True})


class _Pong(msgspec.Struct):
    name: str
    id: str
    version: str


@routes.get("/readyz")
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
