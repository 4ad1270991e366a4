"""Image downloads: blocking, NDJSON (Docker-like lines) and premd's SSE progress stream (what Prem App uses).

Each subscribes to the service's events, sends SCHEDULER_PULL, then follows the operation the reply names.
Success is reported only once the gateway view shows the service downloaded (Prem App refetches the list
on "Download complete" and must see the change); a failure is reported as such, never as complete.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing, asynccontextmanager

import msgspec
from aiohttp import web

from common import bus, codec, subjects
from common.errors import Code, UnavailableError
from common.messages import Empty, OperationAccepted, OperationEvent, PullImage, ServiceIdentity, ServiceState
from gateway import streams
from gateway.apidoc import documented
from gateway.commands import (
    SERVICE_NOT_FOUND,
    OperationFailed,
    Update,
    ask,
    catch_up,
    next_update,
    require_service,
    watch_service,
)
from gateway.errors import ApiError, json_response
from gateway.keys import NC, SETTINGS, VIEW
from gateway.schemas import (
    ProgressDetail,
    PullErrorDetail,
    PullErrorLine,
    PullFailed,
    PullLayerLine,
    PullProgress,
    PullStatusLine,
    SuccessResponse,
)
from gateway.streams import Channel, Closed, premd_sse_message, premd_sse_ping, sse_response

logger = logging.getLogger(__name__)

routes = web.RouteTableDef()

PULL_FAILED = "Failed to download image "
SHUTTING_DOWN = "premd is shutting down"
LOST_END = "the pull ended without the image (its final event was lost; the scheduler's log says why)"
_DOCKER_LAYER_DONE = "Download complete"
"""A layer's Docker status; Prem App would take it for the end of the whole pull."""


class PullOutcome(OperationFailed):
    """The pull ended without success: ``message`` says why; ``status`` is the HTTP status it maps to."""

    def __init__(self, message: str, code: str | None = None, status: int = 400) -> None:
        super().__init__(message, code)
        self.status = status


@asynccontextmanager
async def _pull(request: web.Request) -> AsyncIterator[AsyncIterator[OperationEvent | None]]:
    """Start (or join) the service's pull; yields its progress events, None every ping interval without one."""
    service_id = request.match_info["service_id"]
    require_service(request, service_id)
    async with watch_service(request, service_id) as updates:
        reply = await ask(
            request, subjects.SCHEDULER_PULL, PullImage(service_id=service_id), OperationAccepted, PULL_FAILED
        )
        async with aclosing(_progress(request, service_id, updates, reply.operation_id)) as progress:
            yield progress


async def _progress(
    request: web.Request, service_id: str, updates: Channel[Update], operation_id: str | None
) -> AsyncGenerator[OperationEvent | None]:
    """Progress events until the pull succeeded and the view shows it; raises PullOutcome otherwise.

    The end is read from the operation's last event or, should that event be lost (a bus blip, a publish that
    failed), from the observed state: downloaded and up to date ends it as a success; a pull seen in progress
    that left the "pulling" phase without the image ends it as a failure at the next quiet interval.
    """
    try:
        scheduler = await _scheduler_instance(request)
        seen_pulling = False
        while operation_id is not None:
            try:
                item = await next_update(updates, operation_id, streams.PING_INTERVAL_S)
            except TimeoutError:
                if _downloaded(request, service_id):
                    break
                if seen_pulling and not _pulling(request, service_id):
                    raise OperationFailed(LOST_END, Code.PULL_FAILED) from None
                await _check_scheduler(request, scheduler)  # a quiet pull must still have someone pulling
                yield None
                continue
            seen_pulling = seen_pulling or _pulling(request, service_id)
            if isinstance(item, OperationEvent) and item.type == "succeeded":
                break
            if isinstance(item, OperationEvent) and item.type == "progress":
                yield item
            elif isinstance(item, ServiceState) and _downloaded(request, service_id):
                break
        await catch_up(request)  # downloaded=true was written before the event: make the listing show it
    except OperationFailed as exc:
        raise PullOutcome(exc.message, exc.code) from None
    except Closed:
        raise PullOutcome(SHUTTING_DOWN, status=503) from None


def _downloaded(request: web.Request, service_id: str) -> bool:
    state = request.app[VIEW].state(service_id)
    return state is not None and state.downloaded and not state.needs_update and state.phase != "pulling"


def _pulling(request: web.Request, service_id: str) -> bool:
    state = request.app[VIEW].state(service_id)
    return state is not None and state.phase == "pulling"


async def _scheduler_instance(request: web.Request) -> str | None:
    """The instance id of the scheduler answering commands (new at every start); None when none answers."""
    nc, timeout = request.app[NC], request.app[SETTINGS].request_timeout_s
    try:
        info = await bus.request(nc, subjects.srv_info(subjects.SCHEDULER), Empty(), ServiceIdentity, timeout)
    except UnavailableError:
        return None
    return info.id


async def _check_scheduler(request: web.Request, started_by: str | None) -> None:
    """Raise when the pull's scheduler is gone: no events would ever come, and Prem App would wait forever."""
    now = await _scheduler_instance(request)
    if now is None:
        raise OperationFailed("the scheduler does not answer: the download stopped", Code.BUS_UNAVAILABLE)
    if started_by is not None and now != started_by:
        raise OperationFailed("the scheduler restarted: the download stopped; start it again", Code.PULL_FAILED)


@routes.get("/v1/download-service/{service_id}")
@documented(
    "Download the service's image; answers when the pull has ended",
    response=SuccessResponse,
    errors={400: f"{SERVICE_NOT_FOUND} / Failed to download image <reason>"},
)
async def download(request: web.Request) -> web.Response:
    async with _pull(request) as progress:
        try:
            async for _ in progress:
                pass
        except PullOutcome as exc:
            raise ApiError(PULL_FAILED + exc.message, exc.status, exc.code) from None
    return json_response(SuccessResponse(message="Download image successfully."))


@routes.get("/v1/download-service-stream-sse/{service_id}")
@documented(
    "Download with progress as Server-Sent Events (premd's framing): unnamed events "
    '{"status", "percentage"} never going backwards, a ping comment every 15 s, and last either '
    '{"status": "Download complete", "percentage": 100} (the list already shows downloaded: true) or '
    '{"status": "Error", "error": ..., "percentage": <last>}',
    response=None,
    content_type="text/event-stream",
    errors={400: f"{SERVICE_NOT_FOUND} / Failed to download image <reason> (before streaming)"},
)
async def download_sse(request: web.Request) -> web.StreamResponse:
    async with _pull(request) as progress:
        resp = sse_response()
        await resp.prepare(request)
        percentage = 0.0
        final: msgspec.Struct = PullProgress(status="Download complete", percentage=100)
        try:
            async for event in progress:
                if event is None:
                    await resp.write(premd_sse_ping())
                    continue
                percentage = max(percentage, round(event.percentage or 0.0, 2))
                status = event.status if event.status not in ("", _DOCKER_LAYER_DONE) else "Downloading"
                await resp.write(premd_sse_message(codec.encode(PullProgress(status=status, percentage=percentage))))
        except PullOutcome as exc:
            final = PullFailed(error=exc.message, percentage=percentage)
        except ConnectionResetError:
            return resp  # the client left; the pull goes on in the scheduler
        await _write_last(resp, premd_sse_message(codec.encode(final)))
    return resp


@routes.get("/v1/download-service-stream/{service_id}")
@documented(
    "Download with progress as newline-delimited JSON shaped like Docker's pull events: "
    '{"status", "progressDetail": {"current", "total"}, "id": <layer>} per layer change, then '
    '{"status": "Status: Downloaded image for <image>"} or {"error", "errorDetail": {"message"}}',
    response=None,
    content_type="text/event-stream",
    errors={400: f"{SERVICE_NOT_FOUND} / Failed to download image <reason> (before streaming)"},
)
async def download_ndjson(request: web.Request) -> web.StreamResponse:
    async with _pull(request) as progress:
        resp = web.StreamResponse()
        resp.content_type = "text/event-stream"  # premd's (misleading) content type, kept for its clients
        resp.charset = "utf-8"
        await resp.prepare(request)
        seen: dict[str, tuple[str, int]] = {}
        final: msgspec.Struct
        try:
            async for event in progress:
                for layer in (event.layers or []) if event is not None else []:
                    if seen.get(layer.id) == (layer.status, layer.current):
                        continue
                    seen[layer.id] = (layer.status, layer.current)
                    detail = ProgressDetail(current=layer.current, total=layer.total)
                    line = PullLayerLine(status=layer.status, progress_detail=detail, id=layer.id)
                    await resp.write(codec.encode(line) + b"\n")
            state = request.app[VIEW].state(request.match_info["service_id"])
            image = state.downloaded_image if state is not None and state.downloaded_image else ""
            final = PullStatusLine(status=f"Status: Downloaded image for {image}")
        except PullOutcome as exc:
            final = PullErrorLine(error=exc.message, error_detail=PullErrorDetail(message=exc.message))
        except ConnectionResetError:
            return resp
        await _write_last(resp, codec.encode(final) + b"\n")
    return resp


async def _write_last(resp: web.StreamResponse, data: bytes) -> None:
    try:
        await resp.write(data)
        await resp.write_eof()
    except ConnectionResetError:
        pass
