"""OpenAI-compatible routes: the ``model`` field names a service, the request goes to it unchanged.

The body is read once (bounded by ``openai_max_body_bytes``); only ``model`` is decoded, and the original
bytes are forwarded to the same path on the service through the proxy, so the answer streams back as the
service produces it. For ``/v1/audio/transcriptions`` (multipart) ``model`` is the ``model`` query parameter
(what prem-services read) or else the form field (what Prem App sends): the upload is buffered, within the
same bound, to find it. ``GET /v1/models`` lists ready services.

With ``PREMD_AUTOSTART``, a request for a stopped service starts it and is held until it is ready, for at
most ``PREMD_AUTOSTART_WAIT_S`` (then 503 with ``Retry-After``).
"""

from __future__ import annotations

import email.message
import re
import time

import msgspec
from aiohttp import web

from common import bus, subjects
from common.errors import AppError, Code, ConflictError, FitError, InvalidError, NotFoundError, UnavailableError
from common.messages import OperationAccepted, ServiceState, StartService
from gateway import proxy
from gateway.apidoc import documented
from gateway.errors import ApiError, as_openai, openai_error
from gateway.keys import NC, SETTINGS, VIEW

FORWARDED_PATHS = (
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/images/generations",
    "/v1/audio/transcriptions",
)
MULTIPART_PATH = "/v1/audio/transcriptions"
_NAME_IN_DISPOSITION = re.compile(rb'content-disposition:[^\r\n]*?\bname="([^"]*)"', re.IGNORECASE)
_MAX_PART_HEAD = 8192


class _ModelOnly(msgspec.Struct):
    model: str


_decode_model = msgspec.json.Decoder(_ModelOnly).decode


class ModelCard(msgspec.Struct, frozen=True):
    id: str
    created: int
    object: str = "model"
    owned_by: str = "premd"


class ModelList(msgspec.Struct, frozen=True):
    data: list[ModelCard]
    object: str = "list"


class ModelRequest(msgspec.Struct, frozen=True):
    """What premd reads of an OpenAI request: every other field goes to the service untouched."""

    model: str
    """The id of the service to send the request to."""


async def read_body(request: web.Request, limit: int) -> bytes:
    """The whole body, refusing (413) past ``limit`` without reading further."""
    length = request.content_length
    if length is not None and length > limit:
        raise ApiError(f"body larger than {limit} bytes", 413, Code.BODY_TOO_LARGE)
    buffer = bytearray()
    async for chunk in request.content.iter_any():
        buffer += chunk
        if len(buffer) > limit:
            raise ApiError(f"body larger than {limit} bytes", 413, Code.BODY_TOO_LARGE)
    return bytes(buffer)


def form_field(body: bytes, content_type: str, name: str) -> str | None:
    """The value of one text field of a multipart/form-data body, scanning part headers only."""
    header = email.message.Message()
    header["Content-Type"] = content_type
    boundary = header.get_param("boundary")
    if not isinstance(boundary, str) or not boundary:
        return None
    delimiter = b"--" + boundary.encode("latin-1")
    pos = body.find(delimiter)
    while pos != -1:
        start = pos + len(delimiter)
        if body[start : start + 2] == b"--":
            return None
        head_end = body.find(b"\r\n\r\n", start, start + _MAX_PART_HEAD)
        if head_end == -1:
            return None
        end = body.find(b"\r\n" + delimiter, head_end)
        if end == -1:
            return None
        found = _NAME_IN_DISPOSITION.search(body, start, head_end)
        if found is not None and found.group(1).decode("utf-8", "replace") == name:
            return body[head_end + 4 : end].decode("utf-8", "replace").strip()
        pos = end + 2
    return None


def model_of(request: web.Request, body: bytes) -> str:
    if request.path == MULTIPART_PATH:
        model = request.query.get("model") or form_field(body, request.headers.get("Content-Type", ""), "model")
        if not model:
            raise ApiError("'model' (query or form field) is required", 400, Code.BODY_INVALID)
        return model
    try:
        return _decode_model(body).model
    except msgspec.ValidationError as exc:
        raise ApiError(f"invalid request: {exc}", 400, Code.BODY_INVALID) from None
    except msgspec.DecodeError:
        raise ApiError("the body is not valid JSON", 400, Code.BODY_INVALID) from None


def _status_of(exc: AppError) -> int:
    for kind, status in ((NotFoundError, 404), (InvalidError, 400), (ConflictError, 409), (FitError, 409)):
        if isinstance(exc, kind):
            return status
    return 503 if isinstance(exc, UnavailableError) else 500


async def _start_and_wait(app: web.Application, service_id: str) -> None:
    """Ask the scheduler to start the service, then hold until it is ready, failed, or the wait is over."""
    settings, view = app[SETTINGS], app[VIEW]
    current = view.state(service_id)
    operation_id = current.operation_id if current is not None and current.phase == "starting" else None
    asked_at = time.time()
    if operation_id is None:
        try:
            accepted = await bus.request(
                app[NC],
                subjects.SCHEDULER_START,
                StartService(service_id=service_id),
                OperationAccepted,
                timeout=settings.request_timeout_s,
            )
        except AppError as exc:
            status = _status_of(exc)
            message = exc.message if status < 500 else "the service could not be started"
            raise ApiError(message, status, exc.code) from None
        operation_id = accepted.operation_id

    def settled(values: dict[str, ServiceState]) -> bool:
        state = values.get(service_id)
        if state is None:
            return False
        if state.phase == "ready" and state.host_port:
            return True
        ours = state.operation_id == operation_id or state.updated_at >= asked_at
        return ours and state.phase in ("failed", "crashloop", "stopped")

    try:
        await view.observed.wait_for(settled, timeout=settings.autostart_wait_s)
    except TimeoutError:
        raise ApiError(
            f"service {service_id!r} is still starting",
            503,
            Code.SERVICE_NOT_READY,
            {"Retry-After": proxy.RETRY_AFTER_S},
        ) from None


async def target_of(app: web.Application, service_id: str) -> str:
    """Where to send a request for ``service_id``, starting the service first when autostart is on."""
    try:
        return proxy.resolve(app, service_id)
    except ApiError as exc:
        if not app[SETTINGS].autostart or exc.status not in (409, 503):
            raise
    await _start_and_wait(app, service_id)
    return proxy.resolve(app, service_id)


async def _forward(request: web.Request) -> web.StreamResponse:
    try:
        body = await read_body(request, request.app[SETTINGS].openai_max_body_bytes)
        model = model_of(request, body)
        try:
            target = await target_of(request.app, model)
        except ApiError as exc:
            if exc.status == 404:
                shown = model if len(model) <= 128 else model[:128] + "..."
                raise ApiError(f"The model {shown!r} does not exist", 404, Code.MODEL_NOT_FOUND) from None
            raise
        path_qs = request.rel_url.raw_path + proxy.forwarded_query(request)
        return await proxy.forward(request, model, target, path_qs, prefix="", body=body)
    except ApiError as exc:
        return as_openai(exc)


routes = web.RouteTableDef()
_ERRORS = {
    400: "no or invalid 'model'",
    404: "unknown model",
    409: "service not running",
    413: "body too large",
    503: "service starting",
}


def _forwarding_route(path: str) -> None:
    multipart = path == MULTIPART_PATH

    @routes.post(path)
    @documented(
        f"OpenAI-compatible: forwarded unchanged to {path} of the service named by 'model'",
        body=None if multipart else ModelRequest,
        content_type="multipart/form-data" if multipart else "application/json",
        tags=("openai",),
        errors=_ERRORS,
    )
    async def handler(request: web.Request) -> web.StreamResponse:
        return await _forward(request)


for _path in FORWARDED_PATHS:
    _forwarding_route(_path)


@routes.get("/v1/models")
@documented("OpenAI-compatible: the services ready to take requests", response=ModelList, tags=("openai",))
async def models(request: web.Request) -> web.Response:
    states = request.app[VIEW].observed.values.values()
    cards = [_card(state) for state in sorted(states, key=lambda s: s.service_id) if state.phase == "ready"]
    return web.Response(body=msgspec.json.encode(ModelList(data=cards)), content_type="application/json")


@routes.get("/v1/models/{model}")
@documented(
    "OpenAI-compatible: one ready service", response=ModelCard, tags=("openai",), errors={404: "not ready or unknown"}
)
async def model(request: web.Request) -> web.Response:
    state = request.app[VIEW].state(request.match_info["model"])
    if state is None or state.phase != "ready":
        return openai_error(404, Code.MODEL_NOT_FOUND, "The model does not exist or is not running")
    return web.Response(body=msgspec.json.encode(_card(state)), content_type="application/json")


def _card(state: ServiceState) -> ModelCard:
    return ModelCard(id=state.service_id, created=int(state.updated_at))
