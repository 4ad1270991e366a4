"""``GET /v1/events``: every operation event and catalog change, as Server-Sent Events, from the events stream.

Each message has ``id: <stream sequence>``, ``event: <type>`` (an operation event's type: accepted, progress,
state, succeeded, failed; or ``catalog.changed``) and ``data: <the event's JSON>``. A reconnect with
``Last-Event-ID`` resumes right after that sequence, without gaps (an ordered consumer from that sequence).
"""

from __future__ import annotations

import contextlib
import re

import nats.errors
from aiohttp import web
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy

from common import bus, subjects
from common.manifest import SERVICE_ID_RE
from gateway import streams
from gateway.apidoc import documented
from gateway.errors import InvalidInput
from gateway.keys import NC, SETTINGS
from gateway.schemas import ValidationIssue
from gateway.streams import SSE_PING, Channel, Closed, registered, sse_event, sse_response

routes = web.RouteTableDef()

_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
_SEQUENCE = re.compile(r"[0-9]{1,19}")
"""A stream sequence: ASCII digits only (str.isdigit() takes "²", which int() refuses), within uint64."""
_SVC_PREFIX = f"{subjects.PREFIX}.evt.svc."
_EVT_PREFIX = f"{subjects.PREFIX}.evt."

Item = tuple[int, str, bytes]
"""(stream sequence, subject, data)."""


def _invalid(name: str, msg: str) -> InvalidInput:
    return InvalidInput([ValidationIssue(loc=["query", name], msg=msg, type="value_error")])


def _filter(service: str | None, operation: str | None) -> str:
    if service is not None and not SERVICE_ID_RE.match(service):
        raise _invalid("service", "not a service id")
    if operation is not None:
        if not _TOKEN.match(operation):
            raise _invalid("operation", "not an operation id")
        return subjects.operation_events_filter(operation)
    if service is not None:
        return subjects.service_events_filter(service)
    return subjects.EVENTS_ALL


def _start(last_event_id: str | None, since: str) -> ConsumerConfig:
    """Where to start: after Last-Event-ID if the client sent one, else ``since`` (now | all | <sequence>)."""
    if last_event_id is not None and _SEQUENCE.fullmatch(last_event_id.strip()):
        since = last_event_id.strip()
    if since == "now":
        return ConsumerConfig(deliver_policy=DeliverPolicy.NEW)
    if since == "all":
        return ConsumerConfig(deliver_policy=DeliverPolicy.ALL)
    if _SEQUENCE.fullmatch(since):
        return ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=int(since) + 1)
    raise _invalid("since", "expected now, all, or a stream sequence number")


def event_name(subject: str) -> str:
    if subject.startswith(_SVC_PREFIX):
        return subject.rsplit(".", 1)[-1]
    return subject.removeprefix(_EVT_PREFIX)


@routes.get("/v1/events")
@documented(
    "Operation events and catalog changes as Server-Sent Events (id = stream sequence; resumable with Last-Event-ID)",
    response=None,
    content_type="text/event-stream",
    query={
        "service": "only this service's events",
        "operation": "only this operation's events",
        "since": "now (default: new events only), all (everything kept), or a sequence to resume after",
    },
    errors={422: "a malformed filter"},
)
async def events(request: web.Request) -> web.StreamResponse:
    service = request.query.get("service")
    subject = _filter(service, request.query.get("operation"))
    config = _start(request.headers.get("Last-Event-ID"), request.query.get("since", "now"))
    channel: Channel[Item] = Channel()

    async def on_msg(msg: Msg) -> None:
        await channel.put((msg.metadata.sequence.stream, msg.subject, msg.data))

    bus.require_connected(request.app[NC], subjects.EVENTS_STREAM)
    js = request.app[NC].jetstream(timeout=request.app[SETTINGS].request_timeout_s)
    sub = await js.subscribe(subject, cb=on_msg, stream=subjects.EVENTS_STREAM, ordered_consumer=True, config=config)
    try:
        with registered(request.app, channel):
            resp = sse_response()
            await resp.prepare(request)
            await _pump(resp, channel, service)
    finally:
        await _end(js, sub)
    return resp


async def _end(js: JetStreamContext, sub: JetStreamContext.PushSubscription) -> None:
    """Unsubscribe and delete the consumer now: the server would keep an unwatched one ~5 s longer."""
    await sub.unsubscribe()
    with contextlib.suppress(nats.errors.Error):  # gone already, or NATS is down: the server reaps it
        await js.delete_consumer(subjects.EVENTS_STREAM, (await sub.consumer_info()).name)


async def _pump(resp: web.StreamResponse, channel: Channel[Item], service: str | None) -> None:
    """Copy events to the client until it leaves or the gateway shuts down."""
    service_token = f"{_SVC_PREFIX}{service}." if service is not None else None
    try:
        while True:
            try:
                seq, subject, data = await channel.get(streams.PING_INTERVAL_S)  # read now: tests shorten it
            except TimeoutError:
                await resp.write(SSE_PING)
                continue
            if service_token is not None and not subject.startswith(service_token):
                continue  # ?service= with ?operation=: the subject filter is the operation's
            await resp.write(sse_event(data, event=event_name(subject), id=str(seq)))
    except Closed:
        with contextlib.suppress(ConnectionResetError):
            await resp.write_eof()
    except ConnectionResetError:
        pass
