"""Container, host and GPU statistics in premd's shapes, measured by the scheduler."""

from __future__ import annotations

from aiohttp import web

from common import subjects
from common.errors import Code
from common.messages import ContainerStats, ContainerStatsList, Empty, GetContainerStats, GPUStats, OSStats
from gateway.apidoc import documented
from gateway.commands import SERVICE_NOT_FOUND, ask, require_service
from gateway.errors import ApiError, json_response

routes = web.RouteTableDef()

# premd's (sic) prefix for stats errors: its stats code shared the image-removal handler's text.
STATS_FAILED = "Failed to remove image "


@routes.get("/v1/stats/{service_id}")
@documented(
    "A running service's container stats",
    response=ContainerStats,
    errors={400: f"{SERVICE_NOT_FOUND} / Failed to remove image <reason> (sic: premd's prefix; e.g. not running)"},
)
async def container_stats(request: web.Request) -> web.Response:
    service_id = request.match_info["service_id"]
    require_service(request, service_id)
    reply = await ask(
        request,
        subjects.SCHEDULER_CONTAINER_STATS,
        GetContainerStats(service_id=service_id),
        ContainerStatsList,
        STATS_FAILED,
    )
    for stats in reply.stats:
        if stats.id == service_id:
            return json_response(stats)
    raise ApiError(f"{STATS_FAILED}{service_id} is not running", code=Code.SERVICE_NOT_RUNNING)


@routes.get("/v1/stats/")
@documented("Stats of every running service's container", response=list[ContainerStats])
async def all_container_stats(request: web.Request) -> web.Response:
    reply = await ask(
        request, subjects.SCHEDULER_CONTAINER_STATS, GetContainerStats(), ContainerStatsList, STATS_FAILED
    )
    return json_response(reply.stats)


@routes.get("/v1/stats-all/")
@documented("The host's CPU, memory and disk use", response=OSStats)
async def host_stats(request: web.Request) -> web.Response:
    return json_response(await ask(request, subjects.SCHEDULER_HOST_STATS, Empty(), OSStats, "Failed to get stats "))


@routes.get("/v1/gpu-stats-all/")
@documented("GPU memory and load (every field null without a GPU)", response=GPUStats)
async def gpu_stats(request: web.Request) -> web.Response:
    try:
        return json_response(await ask(request, subjects.SCHEDULER_GPU_STATS, Empty(), GPUStats, ""))
    except ApiError as exc:
        # premd never failed here (any error gave the all-null object); only an unreachable scheduler is reported.
        if exc.status == 503:
            raise
        return json_response(GPUStats())
