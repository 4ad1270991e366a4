"""``/v1/pulls/{id}``: start (or join) a service's download without waiting for it, and cancel one.

For clients that follow the pull on ``GET /v1/events?operation=<id>`` (the ``premd pull`` command): the answer
names the operation. Statuses are HTTP's own (404 unknown service, 409 nothing to cancel), not premd's 400s.
"""

from __future__ import annotations

from aiohttp import web

from common import bus, subjects
from common.errors import AppError, Code, ConflictError, FitError, InvalidError, NotFoundError, UnavailableError
from common.messages import CancelPull, OperationAccepted, PullImage
from gateway.apidoc import documented
from gateway.errors import ApiError, json_response
from gateway.keys import NC, SETTINGS, VIEW

routes = web.RouteTableDef()

_STATUS: tuple[tuple[type[AppError], int], ...] = (
    (NotFoundError, 404),
    (ConflictError, 409),
    (FitError, 409),
    (InvalidError, 400),
    (UnavailableError, 503),
)


def http_error(exc: AppError) -> ApiError:
    """An error from a component with the HTTP status of its kind."""
    status = next((s for kind, s in _STATUS if isinstance(exc, kind)), 500)
    return ApiError(exc.message if status != 500 else "internal error", status, exc.code)


async def command(request: web.Request, subject: str, msg: PullImage | CancelPull) -> OperationAccepted:
    service_id = msg.service_id
    if request.app[VIEW].catalog.get(service_id) is None:
        raise ApiError(f"service {service_id} not found", 404, Code.SERVICE_NOT_FOUND)
    timeout = request.app[SETTINGS].request_timeout_s
    try:
        return await bus.request(request.app[NC], subject, msg, OperationAccepted, timeout)
    except AppError as exc:
        raise http_error(exc) from None


@routes.post("/v1/pulls/{service_id}")
@documented(
    "Start downloading the service's image, or join the download in flight; answers at once with the operation "
    "(follow it on /v1/events?operation=<operation_id>&since=all)",
    response=OperationAccepted,
    query={"force": "1: skip the disk-space check"},
    errors={404: "unknown service", 409: "not enough disk space", 503: "the scheduler does not answer"},
)
async def start_pull(request: web.Request) -> web.Response:
    force = request.query.get("force", "") in ("1", "true")
    cmd = PullImage(service_id=request.match_info["service_id"], force=force)
    return json_response(await command(request, subjects.SCHEDULER_PULL, cmd), 202)


@routes.delete("/v1/pulls/{service_id}")
@documented(
    "Cancel the service's download (for every service sharing its image); answers once it ended with a "
    "failed event coded pull.cancelled",
    response=OperationAccepted,
    errors={404: "unknown service", 409: "no download in progress (pull.not_in_flight)"},
)
async def cancel_pull(request: web.Request) -> web.Response:
    cmd = CancelPull(service_id=request.match_info["service_id"])
    return json_response(await command(request, subjects.SCHEDULER_CANCEL_PULL, cmd))
