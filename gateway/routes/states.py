"""What the ``premd`` command line shows beyond premd's Service JSON: each service's observed state and the host.

``GET /v1/states/``: the scheduler's observed state of every service it knows (phase, readiness, port, GPUs,
last error, the operation in flight); ``GET /v1/system``: premd's version and the host facts (Docker engine,
GPUs, memory, disk). Both come from the gateway's live view; nothing asks Docker.
"""

from __future__ import annotations

import msgspec
from aiohttp import web

from common.messages import HostFacts, ServiceState
from common.version import VERSION
from gateway.apidoc import documented
from gateway.errors import json_response
from gateway.keys import VIEW

routes = web.RouteTableDef()


class SystemInfo(msgspec.Struct, frozen=True, kw_only=True):
    version: str
    host: HostFacts | None
    """None until the scheduler has written the host facts once."""


@routes.get("/v1/states/")
@documented("The observed state of every service the scheduler knows, in id order", response=list[ServiceState])
async def states(request: web.Request) -> web.Response:
    observed = request.app[VIEW].observed.values
    return json_response([observed[key] for key in sorted(observed)])


@routes.get("/v1/system")
@documented("premd's version and the host facts (Docker engine, GPUs, memory, disk)", response=SystemInfo)
async def system(request: web.Request) -> web.Response:
    return json_response(SystemInfo(version=VERSION, host=request.app[VIEW].host))
