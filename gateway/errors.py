"""premd's error responses: the ``{"detail": {"message": ...}}`` envelope, 422 validation bodies, 307 slash redirects.

Status policy: premd answered every handled error with 400; so do we, with premd's message prefix. What premd
answered with 500 (or could not fail at all) gets a truthful status instead: 503 when the bus or Docker does not
answer, 500 (no internals in the body) for bugs.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, TypeVar

import msgspec
import nats.errors
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.typedefs import Handler

from common import codec, conversion
from common.errors import AppError, Code
from gateway.keys import SETTINGS
from gateway.schemas import (
    ErrorMessage,
    ErrorResponse,
    OpenAIErrorBody,
    OpenAIErrorResponse,
    ValidationErrorResponse,
    ValidationIssue,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")

_UNAVAILABLE = frozenset({Code.BUS_TIMEOUT, Code.BUS_UNAVAILABLE, Code.DOCKER_UNAVAILABLE, Code.BUS_DISCONNECTED})
_HIDDEN = "internal error (see premd's log)"
_BUS_DOWN = "premd's message bus (NATS) did not answer"


class ApiError(Exception):
    """Every handled refusal of the HTTP edge: status, stable code, message for people, extra headers.

    premd's routes render it in premd's envelope (``{"detail": {"message", "code"}}``), the OpenAI-compatible
    routes in OpenAI's (``{"error": {"message", "type", "code"}}``).
    """

    def __init__(
        self, message: str, status: int = 400, code: str | None = None, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(f"{code}: {message}" if code else message)
        self.message = message
        self.status = status
        self.code = code
        """The stable code (common.errors.Code) behind it, if any."""
        self.headers = dict(headers or {})

    @classmethod
    def wrap(cls, prefix: str, exc: AppError) -> ApiError:
        """premd's ``<prefix><error text>`` for an error that came back from a component."""
        status = status_for(exc)
        return cls(prefix + (_HIDDEN if status == 500 else exc.message), status, exc.code)


class InvalidInput(Exception):
    """A body or query parameter failed validation: HTTP 422 in FastAPI's shape."""

    def __init__(self, issues: list[ValidationIssue]) -> None:
        super().__init__("; ".join(f"{issue.loc}: {issue.msg}" for issue in issues))
        self.issues = issues


def status_for(exc: AppError) -> int:
    if exc.code in _UNAVAILABLE:
        return 503
    if exc.code == Code.INTERNAL:
        return 500
    return 400


def json_response(body: msgspec.Struct | list[Any], status: int = 200) -> web.Response:
    return web.Response(body=codec.encode(body), status=status, content_type="application/json")


def error_response(
    message: str, status: int = 400, code: str | None = None, headers: Mapping[str, str] | None = None
) -> web.Response:
    """premd's envelope."""
    body = codec.encode(ErrorResponse(detail=ErrorMessage(message=message, code=code)))
    return web.Response(body=body, status=status, content_type="application/json", headers=headers)


_OPENAI_TYPES = {401: "authentication_error", 403: "permission_error"}


def openai_error(status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> web.Response:
    """OpenAI's error shape."""
    kind = _OPENAI_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    body = codec.encode(OpenAIErrorResponse(error=OpenAIErrorBody(message=message, type=kind, code=code)))
    return web.Response(status=status, body=body, content_type="application/json", headers=headers)


def as_premd(exc: ApiError) -> web.Response:
    return error_response(exc.message, exc.status, exc.code, exc.headers)


def as_openai(exc: ApiError) -> web.Response:
    return openai_error(exc.status, exc.code or Code.BAD_REQUEST, exc.message, exc.headers)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    response = await _answer_errors(request, handler)
    if not response.prepared and request.writer.output_size > 0 and request.transport is not None:
        # The handler failed after its stream (SSE, NDJSON, proxy) had started: aiohttp would write the error's
        # status line inside that body. End the connection instead: the client sees a truncated stream.
        request.transport.close()
    return response


async def _answer_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return as_premd(exc)
    except InvalidInput as exc:
        return json_response(ValidationErrorResponse(detail=exc.issues), 422)
    except AppError as exc:
        status = status_for(exc)
        if status == 500:
            logger.error("%s %s: %s", request.method, request.path, exc)
        return error_response(_HIDDEN if status == 500 else exc.message, status, exc.code)
    except web.HTTPRequestEntityTooLarge:  # request.read() past client_max_size (PREMD_MAX_BODY_BYTES)
        limit = request.app[SETTINGS].max_body_bytes
        return error_response(f"body larger than {limit} bytes", 413, Code.BODY_TOO_LARGE)
    except web.HTTPException as exc:
        # FastAPI's bodies for an unknown path or method (and any other HTTP error aiohttp raises).
        return web.json_response({"detail": exc.reason}, status=exc.status, headers=_allow(exc))
    except nats.errors.Error as exc:  # a bus call outside bus.request() (JetStream API): NATS is down or slow
        logger.warning("%s %s: %r", request.method, request.path, exc)
        code = Code.BUS_TIMEOUT if isinstance(exc, TimeoutError) else Code.BUS_UNAVAILABLE
        return error_response(_BUS_DOWN, 503, code)
    except HttpProcessingError as exc:  # a malformed body part (multipart headers) read by the handler: the client's
        return error_response(f"malformed request: {exc.message}", 400, Code.BODY_INVALID)
    except Exception:  # boundary: one failing request never takes the gateway down, and shows no internals
        logger.exception("%s %s failed", request.method, request.path)
        return web.Response(status=500, text="Internal Server Error")


@web.middleware
async def slash_redirect_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Starlette's redirect_slashes: a path that exists only with (or without) a trailing slash gets a 307."""
    missing = request.match_info.http_exception
    path = request.rel_url.raw_path
    if missing is not None and missing.status == 404 and path != "/":
        other = path[:-1] if path.endswith("/") else path + "/"
        match = await request.app.router.resolve(request.clone(rel_url=other))
        found = match.http_exception
        if found is None or found.status == 405:
            query = f"?{request.rel_url.raw_query_string}" if request.rel_url.raw_query_string else ""
            # Absolute, as Starlette answers (built from the Host header the client sent). Returned, not raised,
            # so that the outer (edge) middlewares see a response to add their headers to.
            location = f"{request.scheme}://{request.host}{other}{query}"
            return web.Response(status=307, headers={"Location": location})
    return await handler(request)


def _allow(exc: web.HTTPException) -> dict[str, str]:
    allow = exc.headers.get("Allow")
    return {"Allow": allow} if allow else {}


# ---------------------------------------------------------------- validation (FastAPI / pydantic v1 shapes)

# pydantic v1's wording, keyed by the JSON type that was expected (an optional field expects "... or null").
_TYPE_ERRORS = {
    "integer": ("value is not a valid integer", "type_error.integer"),
    "integer or null": ("value is not a valid integer", "type_error.integer"),
    "number": ("value is not a valid float", "type_error.float"),
    "number or null": ("value is not a valid float", "type_error.float"),
    "string": ("str type expected", "type_error.str"),
    "string or null": ("str type expected", "type_error.str"),
    "boolean": ("value could not be parsed to a boolean", "type_error.bool"),
    "boolean or null": ("value could not be parsed to a boolean", "type_error.bool"),
    "object": ("value is not a valid dict", "type_error.dict"),
    "array": ("value is not a valid list", "type_error.list"),
}


def missing(where: str, name: str) -> InvalidInput:
    return InvalidInput([ValidationIssue(loc=[where, name], msg="field required", type="value_error.missing")])


async def read_json(request: web.Request) -> Any:
    """The request's JSON body; 422 when absent or not JSON (as FastAPI reports it)."""
    data = await request.read()
    if not data.strip():
        raise InvalidInput([ValidationIssue(loc=["body"], msg="field required", type="value_error.missing")])
    try:
        return codec.decode_any(data)
    except msgspec.DecodeError as exc:
        issue = ValidationIssue(loc=["body", 0], msg=str(exc), type="value_error.jsondecode")
        raise InvalidInput([issue]) from None


def convert(value: Any, type_: type[T], where: str = "body") -> T:
    """``value`` as ``type_`` (lax, as pydantic v1 coerced "8000" to 8000); 422 naming the first bad field."""
    try:
        return conversion.convert(value, type_, strict=False)
    except conversion.ConversionError as exc:
        raise InvalidInput([_issue(exc.problem, where)]) from None


async def read_body(request: web.Request, type_: type[T]) -> T:
    return convert(await read_json(request), type_)


def _issue(problem: conversion.FieldProblem, where: str) -> ValidationIssue:
    loc: list[str | int] = [where, *problem.path]
    if problem.kind == "missing":
        return ValidationIssue(loc=loc, msg="field required", type="value_error.missing")
    if problem.kind == "type" and problem.expected in _TYPE_ERRORS:
        msg, kind = _TYPE_ERRORS[problem.expected]
        return ValidationIssue(loc=loc, msg=msg, type=kind)
    return ValidationIssue(loc=loc, msg=problem.detail, type="value_error")
