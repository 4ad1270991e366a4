"""OpenAI-compatible routes: the ``model`` field names a service, the request goes to it unchanged.

The body is read once (bounded by ``openai_max_body_bytes``); only ``model`` is decoded, and the original
bytes are forwarded to the same path on the service through the proxy (``_forward``: the one place that
forwards), so the answer streams back as the service produces it. For ``/v1/audio/transcriptions``
(multipart) ``model`` is the ``model`` query parameter (what prem-services read) or else the form field
(what Prem App sends): the upload is buffered, within the same bound, to find it.

Which service and whether to start it: ``gateway/autostart.py``; what ``GET /v1/models`` lists:
``gateway/openai_models.py``; the idle stop of services started on demand: ``gateway/idle.py``. Every
refusal on these routes is in OpenAI's error shape.
"""

from __future__ import annotations

import email.message
import re

import msgspec
from aiohttp import web

from common import codec
from common.errors import Code
from gateway.apidoc import documented
from gateway.autostart import check_present, shown, target_of
from gateway.errors import ApiError, as_openai, openai_error
from gateway.idle import IDLE, keep_alive_of
from gateway.keys import SETTINGS, VIEW
from gateway.openai_models import ModelCard, ModelList, model_list, one_model
from gateway.routes import proxy

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


_decode_model = codec.decoder(_ModelOnly).decode


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


async def _forward(request: web.Request) -> web.StreamResponse:
    app = request.app
    try:
        keep_alive = keep_alive_of(request)
        body = await read_body(request, app[SETTINGS].openai_max_body_bytes)
        model = model_of(request, body)
        # Activity from now (the wait for an autostart included) until the answer's last byte.
        with app[IDLE].active(model, keep_alive):
            target = await target_of(app, model)
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
@documented(
    "OpenAI-compatible: the models a client may use. Autostart on: every downloaded, supported service "
    "(running or not); off: the ready ones. Each card has premd's extension object 'premd'.",
    response=ModelList,
    tags=("openai",),
)
async def models(request: web.Request) -> web.Response:
    listing = model_list(request.app[VIEW], request.app[SETTINGS].autostart)
    return web.Response(body=codec.encode(listing), content_type="application/json")


@routes.get("/v1/models/{model}")
@documented(
    "OpenAI-compatible: one model, as listed by GET /v1/models",
    response=ModelCard,
    tags=("openai",),
    errors={404: "unknown, not downloaded, or (autostart off) not running"},
)
async def model(request: web.Request) -> web.Response:
    app, model_id = request.app, request.match_info["model"]
    found = one_model(app[VIEW], model_id, app[SETTINGS].autostart)
    if found is not None:
        return web.Response(body=codec.encode(found), content_type="application/json")
    try:
        check_present(app, model_id)
    except ApiError as exc:  # unknown, not downloaded, or still downloading: not a model (yet)
        code = exc.code if exc.status == 404 and exc.code else Code.MODEL_NOT_DOWNLOADED
        return openai_error(404, code, exc.message)
    message = f"The model {shown(model_id)} is not running: start it (POST /v1/run-service/) or set PREMD_AUTOSTART=1."
    if app[SETTINGS].autostart:  # downloaded, not running, and either gone from the catalog or not for this machine
        message = f"The model {shown(model_id)} cannot run on this machine (no image for it in the catalog)."
    return openai_error(404, Code.MODEL_NOT_FOUND, message)
