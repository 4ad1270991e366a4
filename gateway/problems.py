"""Error responses of the gateway's edge: premd's envelope (plus a stable code) and OpenAI's shape.

premd's routes answer ``{"detail": {"message": ..., "code": ...}}``; the OpenAI-compatible routes answer
``{"error": {"message", "type", "code"}}`` so that OpenAI SDKs show the message.
"""

from __future__ import annotations

from collections.abc import Mapping

import msgspec
from aiohttp import web

# Stable codes of refusals made by the edge (the bus's codes live in common.errors.Code).
AUTH_REQUIRED = "auth.required"
AUTH_INVALID = "auth.invalid"
FOREIGN_ORIGIN = "security.foreign_origin"
CROSS_SITE = "security.cross_site"
HOST_NOT_ALLOWED = "security.host_not_allowed"
CORS_ORIGIN_NOT_ALLOWED = "cors.origin_not_allowed"
PROXY_UNREACHABLE = "proxy.unreachable"
BODY_TOO_LARGE = "request.too_large"
BODY_INVALID = "request.invalid"
MODEL_NOT_FOUND = "model_not_found"

_OPENAI_TYPES = {401: "authentication_error", 403: "permission_error"}


class _Detail(msgspec.Struct, frozen=True):
    message: str
    code: str


class PremdError(msgspec.Struct, frozen=True):
    """premd's error envelope, as every premd route answers it."""

    detail: _Detail


class _OpenAIErrorBody(msgspec.Struct, frozen=True):
    message: str
    type: str
    code: str


class OpenAIError(msgspec.Struct, frozen=True):
    """OpenAI's error shape, used by the /v1/chat/completions family."""

    error: _OpenAIErrorBody


class EdgeError(Exception):
    """A refusal decided by the edge; each route renders it in its own shape."""

    def __init__(self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})


def premd_error(status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> web.Response:
    body = msgspec.json.encode(PremdError(_Detail(message=message, code=code)))
    return web.Response(status=status, body=body, content_type="application/json", headers=headers)


def openai_error(status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> web.Response:
    kind = _OPENAI_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    body = msgspec.json.encode(OpenAIError(_OpenAIErrorBody(message=message, type=kind, code=code)))
    return web.Response(status=status, body=body, content_type="application/json", headers=headers)


def as_premd(exc: EdgeError) -> web.Response:
    return premd_error(exc.status, exc.code, exc.message, exc.headers)


def as_openai(exc: EdgeError) -> web.Response:
    return openai_error(exc.status, exc.code, exc.message, exc.headers)
