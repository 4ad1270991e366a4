"""``GET /v1/logs/{id}``: a service container's log lines; ``?follow=1`` streams new ones as Server-Sent Events.

Follow: the gateway subscribes to a session subject of its own, asks the scheduler to follow the container's
log onto it, renews the session while the client stays, and stops it when the client leaves. SSE messages:
``event: log`` with ``data: {"lines": [...]}``, then one ``event: end`` once the log ended (the container
stopped); a ``: ping`` comment while quiet.
"""

from __future__ import annotations

import contextlib
import secrets
import time

import msgspec
from aiohttp import web
from nats.aio.msg import Msg

from common import bus, codec, subjects
from common.errors import AppError, Code, UnavailableError
from common.messages import Ack, LogChunk, ReadLogs, RenewLogs, ServiceLogs
from gateway.apidoc import documented
from gateway.errors import ApiError, InvalidInput, json_response
from gateway.keys import NC, SETTINGS, VIEW
from gateway.routes.pulls import http_error
from gateway.schemas import ValidationIssue
from gateway.streams import SSE_PING, Channel, Closed, registered, sse_event, sse_response

routes = web.RouteTableDef()

RENEW_S = 10.0
"""How often a followed session is renewed (the scheduler ends one not renewed for scheduler.logs.LEASE_S)."""
MAX_TAIL = 100_000


class LogLines(msgspec.Struct, frozen=True):
    lines: list[str]


def _tail(raw: str | None) -> int | None:
    if raw is None or raw == "all":
        return None
    if not raw.isascii() or not raw.isdigit() or int(raw) > MAX_TAIL:
        issue = ValidationIssue(loc=["query", "tail"], msg=f"expected all or 0..{MAX_TAIL}", type="value_error")
        raise InvalidInput([issue])
    return int(raw)


@routes.get("/v1/logs/{service_id}")
@documented(
    "A service container's log (stdout and stderr); with follow=1 the last lines, then new ones as "
    'Server-Sent Events (event "log": {"lines": [...]}, event "end" once the container stopped)',
    response=ServiceLogs,
    query={"tail": "only the last N lines (default: all)", "follow": "1: stream new lines as SSE"},
    errors={404: "unknown service, or it has no container (never started)", 422: "a malformed tail"},
)
async def logs(request: web.Request) -> web.StreamResponse:
    service_id = request.match_info["service_id"]
    view = request.app[VIEW]
    if view.catalog.get(service_id) is None and view.state(service_id) is None:  # a malformed id too
        raise ApiError(f"service {service_id} not found", 404, Code.SERVICE_NOT_FOUND)
    tail = _tail(request.query.get("tail"))
    nc, timeout = request.app[NC], request.app[SETTINGS].request_timeout_s
    if request.query.get("follow", "") not in ("1", "true"):
        try:
            reply = await bus.request(
                nc, subjects.SCHEDULER_LOGS, ReadLogs(service_id=service_id, tail=tail), ServiceLogs, timeout
            )
        except AppError as exc:
            raise http_error(exc) from None
        return json_response(reply)
    return await _follow(request, service_id, tail)


async def _follow(request: web.Request, service_id: str, tail: int | None) -> web.StreamResponse:
    nc, timeout = request.app[NC], request.app[SETTINGS].request_timeout_s
    session = secrets.token_hex(12)
    channel: Channel[LogChunk] = Channel()

    async def on_msg(msg: Msg) -> None:
        await channel.put(codec.decode(msg.data, LogChunk))

    sub = await nc.subscribe(subjects.logs_subject(session), cb=on_msg)
    ended = False
    try:
        cmd = ReadLogs(service_id=service_id, tail=tail, follow=True, session=session)
        try:
            await bus.request(nc, subjects.SCHEDULER_LOGS, cmd, ServiceLogs, timeout)
        except AppError as exc:
            ended = True  # no session was made
            raise http_error(exc) from None
        with registered(request.app, channel):
            resp = sse_response()
            await resp.prepare(request)
            ended = await _pump(request, resp, channel, session)
    finally:
        await sub.unsubscribe()
        if not ended:  # the client left (or the gateway stops): end the scheduler's Docker log stream now
            with contextlib.suppress(AppError):
                await bus.request(
                    nc, subjects.SCHEDULER_LOGS_RENEW, RenewLogs(session=session, stop=True), Ack, timeout
                )
    return resp


async def _pump(request: web.Request, resp: web.StreamResponse, channel: Channel[LogChunk], session: str) -> bool:
    """Copy chunks to the client; True when the log ended (the scheduler closed the session)."""
    nc, timeout = request.app[NC], request.app[SETTINGS].request_timeout_s
    renewed = time.monotonic()
    try:
        while True:
            if time.monotonic() - renewed >= RENEW_S:
                try:
                    await bus.request(nc, subjects.SCHEDULER_LOGS_RENEW, RenewLogs(session=session), Ack, timeout)
                except UnavailableError:
                    pass  # the scheduler is slow or restarting: try again at the next renewal
                except AppError:  # the session is gone (the scheduler restarted): nothing more will come
                    await resp.write(sse_event(b"{}", event="end"))
                    return True
                renewed = time.monotonic()
            try:
                chunk = await channel.get(RENEW_S)
            except TimeoutError:
                await resp.write(SSE_PING)
                continue
            if chunk.lines:
                await resp.write(sse_event(codec.encode(LogLines(lines=chunk.lines)), event="log"))
            if chunk.end:
                await resp.write(sse_event(b"{}", event="end"))
                with contextlib.suppress(ConnectionResetError):
                    await resp.write_eof()
                return True
    except Closed:
        with contextlib.suppress(ConnectionResetError):
            await resp.write_eof()
    except ConnectionResetError:
        pass
    return False
