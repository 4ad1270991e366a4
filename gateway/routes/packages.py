"""Model packages: upload (streamed to disk while hashed, then to the object store), list, get, download, logs,
delete. The builder does the work over the bus; metadata is read from KV_PACKAGES (a live mirror for listings).

JSON keys are the original model server's (``ID``, ``Name``, ``Artifacts[{Target, URI}]``, ``Config``) plus
``Status``, ``Stage``, ``Timings``, digests and ``Error`` (common/messages.py PackageRecord).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiofiles
import aiofiles.os
import msgspec
import nats.errors
import nats.js.errors
from aiohttp import BodyPartReader, web
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, DeliverPolicy

from common import bus, codec, subjects
from common.errors import PACKAGE_HTTP_STATUS, AppError, Code
from common.jetstream import KVMirror, kv_bucket, kv_get
from common.messages import (
    PACKAGE_ENDED,
    Ack,
    DeletePackage,
    PackageAccepted,
    PackageEvent,
    PackageRecord,
    UploadPackage,
)
from common.objects import iter_object, object_info
from gateway import streams
from gateway.apidoc import documented
from gateway.errors import ApiError, json_response, status_for
from gateway.keys import NC, SETTINGS
from gateway.streams import Channel, Closed, registered, sse_event, sse_response

logger = logging.getLogger(__name__)

routes = web.RouteTableDef()

PACKAGES: web.AppKey[KVMirror[PackageRecord]] = web.AppKey("packages")
UPLOAD_FIELD = "file"
CHUNK = 256 * 1024
_ID = re.compile(r"^[0-9a-f]{64}$")
NDJSON = "application/x-ndjson"


async def packages_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the live mirror of KV_PACKAGES that listings read."""
    mirror = KVMirror(await kv_bucket(app[NC].jetstream(), subjects.KV_PACKAGES), PackageRecord)
    await mirror.start()
    app[PACKAGES] = mirror
    yield
    await mirror.stop()


def _not_found(package_id: str) -> ApiError:
    return ApiError(f"Package {package_id} not found.", 404, Code.PACKAGE_NOT_FOUND)


def _refusal(exc: AppError) -> ApiError:
    status = PACKAGE_HTTP_STATUS.get(exc.code) or (404 if exc.code == Code.PACKAGE_NOT_FOUND else status_for(exc))
    return ApiError(exc.message if status != 500 else "internal error (see premd's log)", status, exc.code)


async def _record(request: web.Request, package_id: str) -> PackageRecord:
    if not _ID.match(package_id):
        raise _not_found(package_id)
    kv = await kv_bucket(request.app[NC].jetstream(), subjects.KV_PACKAGES)
    record, _ = await kv_get(kv, package_id, PackageRecord)
    if record is None:
        raise _not_found(package_id)
    return record


# ---------------------------------------------------------------- upload


@routes.post("/v1/packages/upload")
@documented(
    "Upload a model package (multipart field `file`: a zip with jid.yaml at its root). 202 with Status queued; "
    "200 with the package when its ID is already ready; identical uploads share one build",
    response=PackageRecord,
    upload_field=UPLOAD_FIELD,
    also_ok=(202,),
    errors={
        400: "not a usable zip (truncated, unsafe paths, links, duplicates) or no `file` field",
        413: "larger than PREMD_PACKAGE_MAX_UPLOAD_BYTES, or a zip bomb",
        415: "the body is not multipart/form-data",
        422: "jid.yaml missing or invalid (the message names the key, line and column)",
    },
)
async def upload(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    if not request.content_type.startswith("multipart/"):
        raise ApiError(
            f"the upload must be multipart/form-data with a field named {UPLOAD_FIELD!r} "
            f"(curl -F {UPLOAD_FIELD}=@package.zip), not {request.content_type or 'an untyped body'}",
            415,
            Code.PACKAGE_NOT_MULTIPART,
        )
    spool = Path(settings.data_dir) / "uploads"
    await aiofiles.os.makedirs(spool, exist_ok=True)
    path = spool / f"{uuid.uuid4().hex}.zip"
    try:
        size, sha256 = await _spool(request, path, settings.package_max_upload_bytes)
        name = path.name
        js = request.app[NC].jetstream(timeout=settings.request_timeout_s)
        store = await js.object_store(subjects.OBJ_PACKAGE_UPLOADS)
        with path.open("rb") as body:  # put() reads it chunk by chunk in a thread
            await store.put(name, body)
    finally:
        with contextlib.suppress(FileNotFoundError):
            await aiofiles.os.remove(path)
    command = UploadPackage(upload=name, size=size, sha256=sha256)
    try:
        reply = await bus.request(
            request.app[NC], subjects.PACKAGE_UPLOAD, command, PackageAccepted, settings.package_upload_timeout_s
        )
    except AppError as exc:
        if exc.code in (Code.BUS_UNAVAILABLE, Code.BUS_TIMEOUT):
            with contextlib.suppress(nats.errors.Error):
                await store.delete(name)
        raise _refusal(exc) from None
    ready = reply.package.status == "ready" and not reply.created
    return json_response(reply.package, 200 if ready else 202)


async def _spool(request: web.Request, path: Path, limit: int) -> tuple[int, str]:
    """Stream the ``file`` part to ``path`` while hashing it; (size, sha256). Other parts are skipped."""
    try:
        reader = await request.multipart()
        part = await reader.next()
        while part is not None:
            if isinstance(part, BodyPartReader) and part.name == UPLOAD_FIELD:
                return await _write_part(part, path, limit)
            await part.release()
            part = await reader.next()
    except (ValueError, AssertionError) as exc:  # aiohttp's words for a malformed multipart body
        raise ApiError(f"malformed multipart body: {exc}", 400, Code.PACKAGE_NOT_MULTIPART) from None
    raise ApiError(
        f"the multipart body has no field named {UPLOAD_FIELD!r} (curl -F {UPLOAD_FIELD}=@package.zip)",
        400,
        Code.PACKAGE_NO_FILE,
    )


async def _write_part(part: BodyPartReader, path: Path, limit: int) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    async with aiofiles.open(path, "wb") as out:
        while chunk := await part.read_chunk(CHUNK):
            size += len(chunk)
            if size > limit:
                raise ApiError(
                    f"the package is larger than {limit} bytes (PREMD_PACKAGE_MAX_UPLOAD_BYTES)",
                    413,
                    Code.PACKAGE_TOO_LARGE,
                )
            digest.update(chunk)
            await out.write(chunk)
    return size, digest.hexdigest()


# ---------------------------------------------------------------- queries


@routes.get("/v1/packages/")
@documented("Every package, by ID", response=list[PackageRecord])
async def list_packages(request: web.Request) -> web.Response:
    return await _listing(request)


@routes.get("/v1/packages")
@documented("Every package, by ID (same as /v1/packages/)", response=list[PackageRecord])
async def list_packages_no_slash(request: web.Request) -> web.Response:
    return await _listing(request)


async def _listing(request: web.Request) -> web.Response:
    mirror = request.app[PACKAGES]
    js = request.app[NC].jetstream(timeout=request.app[SETTINGS].request_timeout_s)
    last = (await js.stream_info(f"KV_{subjects.KV_PACKAGES}")).state.last_seq
    with contextlib.suppress(TimeoutError):  # read-your-writes; a lagging mirror still answers
        await mirror.wait_for(lambda _: mirror.revision >= last, request.app[SETTINGS].request_timeout_s)
    return json_response([mirror.values[key] for key in sorted(mirror.values)])


@routes.get("/v1/packages/{package_id}.zip")
@documented(
    "The package's zip, byte-identical to its first upload",
    response=None,
    content_type="application/zip",
    errors={404: "unknown package"},
)
async def download(request: web.Request) -> web.StreamResponse:
    package_id = request.match_info["package_id"]
    await _record(request, package_id)
    js = request.app[NC].jetstream(timeout=request.app[SETTINGS].request_timeout_s)
    try:
        info = await object_info(js, subjects.OBJ_PACKAGES, package_id)
    except nats.js.errors.NotFoundError:
        raise _not_found(package_id) from None
    resp = web.StreamResponse(
        headers={"Content-Disposition": f'attachment; filename="{package_id}.zip"', "Content-Type": "application/zip"}
    )
    resp.content_length = info.size or 0
    await resp.prepare(request)
    async for chunk in iter_object(js, subjects.OBJ_PACKAGES, info):
        await resp.write(chunk)
    await resp.write_eof()
    return resp


@routes.get("/v1/packages/{package_id}")
@documented("One package", response=PackageRecord, errors={404: "unknown package"})
async def get_package(request: web.Request) -> web.Response:
    return json_response(await _record(request, request.match_info["package_id"]))


@routes.delete("/v1/packages/{package_id}")
@documented(
    "Delete a package: from the catalog, the metadata and the object store (pushed images stay in the registry)",
    response=Ack,
    errors={404: "unknown package"},
)
async def delete_package(request: web.Request) -> web.Response:
    package_id = request.match_info["package_id"]
    await _record(request, package_id)
    try:
        reply = await bus.request(
            request.app[NC],
            subjects.PACKAGE_DELETE,
            DeletePackage(package_id=package_id),
            Ack,
            request.app[SETTINGS].request_timeout_s,
        )
    except AppError as exc:
        raise _refusal(exc) from None
    return json_response(reply)


# ---------------------------------------------------------------- logs


@routes.get("/v1/packages/{package_id}/logs")
@documented(
    "The package's build log (NDJSON, one event per line: state changes and log lines of the last attempt); "
    "?follow=1: Server-Sent Events until the build ends",
    response=None,
    content_type=NDJSON,
    query={"follow": "1: stream as Server-Sent Events until the build ends"},
    errors={404: "unknown package"},
)
async def logs(request: web.Request) -> web.StreamResponse:
    package_id = request.match_info["package_id"]
    record = await _record(request, package_id)
    follow = request.query.get("follow", "") in ("1", "true", "yes")
    js = request.app[NC].jetstream(timeout=request.app[SETTINGS].request_timeout_s)
    if record.status in PACKAGE_ENDED:
        stored = await _stored_log(request, package_id)
        if stored is not None:
            return await (_sse_stored(request, stored) if follow else _ndjson(request, stored))
    if not follow:
        return await _ndjson(request, await _events_so_far(js, package_id, record.attempt))
    return await _follow(request, package_id, record.attempt)


async def _stored_log(request: web.Request, package_id: str) -> list[bytes] | None:
    js = request.app[NC].jetstream(timeout=request.app[SETTINGS].request_timeout_s)
    try:
        info = await object_info(js, subjects.OBJ_LOGS, subjects.package_log_object(package_id))
    except nats.js.errors.NotFoundError:
        return None
    data = b"".join([chunk async for chunk in iter_object(js, subjects.OBJ_LOGS, info)])
    return [line for line in data.split(b"\n") if line.strip()]


async def _events_so_far(js: nats.js.JetStreamContext, package_id: str, attempt: int) -> list[bytes]:
    """This attempt's events in the event stream now (an ephemeral pull consumer read to its end)."""
    psub = await js.pull_subscribe(
        subjects.package_events_filter(package_id),
        stream=subjects.EVENTS_STREAM,
        config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
    )
    out: list[bytes] = []
    try:
        pending = (await psub.consumer_info()).num_pending or 0
        while pending > 0:
            msgs = await psub.fetch(min(pending, 256), timeout=5)
            for msg in msgs:
                await msg.ack()
                if _attempt_of(msg.data) == attempt:
                    out.append(msg.data)
            pending -= len(msgs)
    finally:
        await psub.unsubscribe()
    return out


def _attempt_of(data: bytes) -> int | None:
    try:
        return codec.decode(data, PackageEvent).attempt
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


async def _ndjson(request: web.Request, lines: list[bytes]) -> web.Response:
    return web.Response(body=b"".join(line + b"\n" for line in lines), content_type=NDJSON)


async def _sse_stored(request: web.Request, lines: list[bytes]) -> web.StreamResponse:
    resp = sse_response()
    await resp.prepare(request)
    for line in lines:
        await resp.write(sse_event(line, event=_event_type(line)))
    await resp.write(sse_event(b"{}", event="end"))
    await resp.write_eof()
    return resp


def _event_type(data: bytes) -> str:
    try:
        return codec.decode(data, PackageEvent).type
    except (msgspec.DecodeError, msgspec.ValidationError):
        return "log"


async def _follow(request: web.Request, package_id: str, attempt: int) -> web.StreamResponse:
    """SSE of the attempt's events (replayed from its start, then live) until its final state event."""
    channel: Channel[tuple[int, bytes]] = Channel()

    async def on_msg(msg: Msg) -> None:
        await channel.put((msg.metadata.sequence.stream, msg.data))

    js = request.app[NC].jetstream(timeout=request.app[SETTINGS].request_timeout_s)
    sub = await js.subscribe(
        subjects.package_events_filter(package_id),
        cb=on_msg,
        stream=subjects.EVENTS_STREAM,
        ordered_consumer=True,
        config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
    )
    resp = sse_response()
    try:
        with registered(request.app, channel):
            await resp.prepare(request)
            while True:
                try:
                    seq, data = await channel.get(streams.PING_INTERVAL_S)
                except TimeoutError:
                    await resp.write(streams.SSE_PING)
                    continue
                try:
                    event = codec.decode(data, PackageEvent)
                except (msgspec.DecodeError, msgspec.ValidationError):
                    continue
                if event.attempt != attempt:
                    continue
                await resp.write(sse_event(data, event=event.type, id=str(seq)))
                if event.type == "state" and event.status in PACKAGE_ENDED:
                    await resp.write(sse_event(b"{}", event="end"))
                    break
            await resp.write_eof()
    except (Closed, ConnectionResetError):
        pass
    finally:
        with contextlib.suppress(nats.errors.Error):
            await sub.unsubscribe()
    return resp
