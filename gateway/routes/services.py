"""The service list and custom services: read from the gateway view (no bus or Docker call per listing)."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from aiohttp.helpers import ETAG_ANY

from common import codec, subjects
from common.messages import AddCustomService, Empty
from gateway.apidoc import documented
from gateway.commands import SERVICE_NOT_FOUND, ask, not_found
from gateway.errors import ApiError, convert, json_response, read_json
from gateway.keys import LISTING, SETTINGS, VIEW
from gateway.schemas import Service, ServiceInput

routes = web.RouteTableDef()


class BulkResponse(web.Response):
    """A response whose head is written before its body, in two writes, not joined into one buffer.

    aiohttp coalesces a Response's head and body into one ``b"".join`` before writing it (on Python before
    3.12.9, where it avoids ``writelines``): for the service list that is a fresh copy of megabytes per
    request (5.7 MB at 1,000 services; on a VM each page of it faults in), most of what a poll costs the
    gateway. aiohttp's own StreamResponse sends its head at once; this opts a plain Response into the same.
    """

    _send_headers_immediately = True


@routes.get("/v1/services/")
@documented(
    "Every service of the catalog, in registry order, with its state on this machine "
    "(with an ETag: If-None-Match answers 304 while the list is unchanged)",
    response=list[Service],
)
async def list_services(request: web.Request) -> web.Response:
    body, tag = request.app[LISTING].encoded(request.scheme, request.host)
    # no-cache: a cache keeps the list but asks every time (a 304 costs no body); the state must be current.
    headers = {"Cache-Control": "no-cache"}
    if any(seen.value in (tag, ETAG_ANY) for seen in request.if_none_match or ()):
        response = web.Response(status=304, headers=headers)
    else:
        response = BulkResponse(body=body, content_type="application/json", headers=headers)
    response.etag = tag
    return response


@routes.post("/v1/services/")
@documented(
    "Add a custom service (a manifest; kept across restarts) and answer it as listed",
    body=ServiceInput,
    response=Service,
    errors={400: "Failed to add service <reason> (duplicate id, invalid manifest)", 422: "a required key is missing"},
)
async def add_service(request: web.Request) -> web.Response:
    raw: dict[str, Any] = convert(await read_json(request), dict[str, Any])
    service_id = convert(raw, ServiceInput).id
    await ask(request, subjects.CUSTOM_SERVICE_ADD, AddCustomService(manifest=raw), Empty, "Failed to add service ")
    key = subjects.catalog_key(service_id)
    try:
        await request.app[VIEW].catalog.entries_mirror.wait_for(
            lambda entries: key in entries, request.app[SETTINGS].request_timeout_s
        )
    except TimeoutError:
        raise ApiError("Failed to add service: the catalog did not show it in time", 503) from None
    return json_response(_one(request, service_id))


@routes.get("/v1/services/{service_id}")
@documented("One service", response=Service, errors={400: SERVICE_NOT_FOUND})
async def get_service(request: web.Request) -> web.Response:
    return json_response(_one(request, request.match_info["service_id"]))


@routes.get("/v1/services-by-interface/{interface_id}")
@documented("The services implementing an interface (unknown interface: [])", response=list[Service])
async def services_by_interface(request: web.Request) -> web.Response:
    interface = request.match_info["interface_id"]
    services, _ = request.app[LISTING].services(request.scheme, request.host)
    body = codec.encode([service for service in services if interface in service.interfaces])
    return BulkResponse(body=body, content_type="application/json")


def _one(request: web.Request, service_id: str) -> Service:
    service = request.app[LISTING].one(service_id, request.scheme, request.host)
    if service is None:
        raise not_found()
    return service
