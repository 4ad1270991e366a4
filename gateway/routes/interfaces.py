"""``GET /v1/interfaces/``: premd's fixed list of interfaces."""

from __future__ import annotations

from aiohttp import web

from common import codec
from gateway.apidoc import documented
from gateway.interface_texts import INTERFACES
from gateway.schemas import Interface

routes = web.RouteTableDef()

_BODY = codec.encode(INTERFACES)


@routes.get("/v1/interfaces/")
@documented(
    "The Prem interfaces services implement (chat, embeddings, ...), in premd's order", response=list[Interface]
)
async def interfaces(request: web.Request) -> web.Response:
    return web.Response(body=_BODY, content_type="application/json")
