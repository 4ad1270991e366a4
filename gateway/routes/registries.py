"""Registries: ``GET/POST/DELETE /v1/registries/``, answered by registry_sync over the bus."""

from __future__ import annotations

from aiohttp import web

from common import subjects
from common.messages import AddRegistry, Empty, RegistryList, RemoveRegistry
from gateway.apidoc import documented
from gateway.commands import ask, catch_up
from gateway.errors import json_response, missing, read_body
from gateway.keys import SETTINGS
from gateway.schemas import RegistryInput, RegistryResponse, SuccessResponse

routes = web.RouteTableDef()


@routes.get("/v1/registries/")
@documented("Configured registries, in order", response=list[RegistryResponse])
async def list_registries(request: web.Request) -> web.Response:
    reply = await ask(request, subjects.REGISTRY_LIST, Empty(), RegistryList, "Failed to list registries ")
    return json_response([RegistryResponse(url=status.url) for status in reply.registries])


@routes.post("/v1/registries/")
@documented(
    "Add a registry: fetched now, its services merged into the catalog (first id wins)",
    body=RegistryInput,
    response=RegistryResponse,
    errors={400: "Failed to add registry <reason> (duplicate, unreachable, not a JSON array)", 422: "no url"},
)
async def add_registry(request: web.Request) -> web.Response:
    body = await read_body(request, RegistryInput)
    # registry_sync answers once the fetch (bounded by the fetch deadline) is validated and merged, or has
    # failed: wait that long, plus the request deadline for the rest, so that the answer says what happened.
    settings = request.app[SETTINGS]
    wait = settings.registry_fetch_timeout_s + settings.request_timeout_s
    await ask(request, subjects.REGISTRY_ADD, AddRegistry(url=body.url), Empty, "Failed to add registry ", wait)
    await catch_up(request, subjects.KV_CATALOG)  # the next listing has the registry's services
    return json_response(RegistryResponse(url=body.url))


@routes.delete("/v1/registries/")
@documented(
    "Remove a registry and the services that came from it",
    query={"url": "the registry's URL, as listed (required)"},
    response=SuccessResponse,
    errors={400: "Failed to remove registry <url>", 422: "no url"},
)
async def remove_registry(request: web.Request) -> web.Response:
    url = request.query.get("url")
    if url is None:
        raise missing("query", "url")
    await ask(request, subjects.REGISTRY_REMOVE, RemoveRegistry(url=url), Empty, f"Failed to remove registry {url}: ")
    await catch_up(request, subjects.KV_CATALOG)
    return json_response(SuccessResponse(message=f"Registry {url} removed successfully."))
