"""premd's HTTP JSON shapes (docs/http-api.md), as msgspec Structs.

Key order is the order premd (FastAPI response models) emitted them in; nullable fields are always
present. Stats shapes are the scheduler's replies, passed through: see common.messages.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec


class Service(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """premd's ServiceResponse: exactly these 29 keys, in this order."""

    id: str
    name: str
    description: str | None
    documentation: str | None
    icon: str | None
    model_info: dict[str, Any]
    """Always an object (Prem App's detail page crashes on null)."""
    interfaces: list[str]
    docker_image: str
    """The image for this host (GPU variant when a GPU is present), "" when unsupported."""
    docker_image_size: int
    """Bytes, as the registry states it; 0 when unsupported."""
    default_port: int | None
    default_external_port: int | None
    running_port: int | None
    """Host port of the running container; null when not running."""
    command: str | None
    volume_path: str | None
    volume_name: str | None
    """Volume of the running container; null when not running."""
    running: bool
    downloaded: bool
    downloaded_docker_image: str | None
    """Local image a start would use; null when not downloaded."""
    needs_update: bool
    supported: bool
    enough_memory: bool
    enough_system_memory: bool
    enough_storage: bool
    beta: bool
    coming_soon: bool
    env_variables: list[str] | None
    exec_commands: list[str] | None
    prompt_template: str | None
    base_url: str | None
    """The gateway's proxy for this service: ``http://<host the client used>/proxy/<id>``."""


class ServiceInput(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """Body of ``POST /v1/services/``: premd's required keys (others are kept and passed to the catalog)."""

    id: str
    name: str
    model_info: dict[str, Any]
    interfaces: list[str]
    docker_images: dict[str, Any]
    default_port: int
    default_external_port: int
    running_port: int | None = None
    volume_path: str | None = None
    volume_name: str | None = None
    env_variables: list[str] | None = None
    prompt_template: str | None = None


class RunServiceInput(msgspec.Struct, frozen=True, kw_only=True):
    id: str


class RegistryInput(msgspec.Struct, frozen=True, kw_only=True):
    url: str


class RegistryResponse(msgspec.Struct, frozen=True, kw_only=True):
    url: str


class Interface(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    name: str
    playground: bool
    documentation: str
    icon: str


class HealthResponse(msgspec.Struct, frozen=True, kw_only=True):
    status: bool


class SuccessResponse(msgspec.Struct, frozen=True, kw_only=True):
    message: str


class ErrorMessage(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    message: str
    code: str | None = None
    """premd extension: the stable error code (common.errors.Code) when there is one."""


class ErrorResponse(msgspec.Struct, frozen=True, kw_only=True):
    """Every handled error: ``{"detail": {"message": ...}}``."""

    detail: ErrorMessage


class OpenAIErrorBody(msgspec.Struct, frozen=True, kw_only=True):
    message: str
    type: str
    code: str


class OpenAIErrorResponse(msgspec.Struct, frozen=True, kw_only=True):
    """The OpenAI-compatible routes' errors, in OpenAI's shape so that its SDKs show the message."""

    error: OpenAIErrorBody


class ValidationIssue(msgspec.Struct, frozen=True, kw_only=True):
    """One problem of an invalid body or query, as FastAPI / pydantic v1 reported it."""

    loc: list[str | int]
    msg: str
    type: str


class ValidationErrorResponse(msgspec.Struct, frozen=True, kw_only=True):
    """HTTP 422: ``{"detail": [{"loc": ["body", "id"], "msg": "field required", "type": "value_error.missing"}]}``."""

    detail: list[ValidationIssue]


# ---------------------------------------------------------------- pull progress streams


class PullProgress(msgspec.Struct, frozen=True, kw_only=True):
    """One message of ``download-service-stream-sse``; the last one is ``Download complete`` at 100."""

    status: str
    percentage: float | int


class PullFailed(msgspec.Struct, frozen=True, kw_only=True):
    """Last message of ``download-service-stream-sse`` when the pull failed (never followed by "Download complete")."""

    status: Literal["Error"] = "Error"
    error: str
    percentage: float | int


class ProgressDetail(msgspec.Struct, frozen=True, kw_only=True):
    current: int
    total: int


class PullLayerLine(msgspec.Struct, frozen=True, kw_only=True):
    """A ``download-service-stream`` line, shaped like a Docker Engine pull event."""

    status: str
    progress_detail: ProgressDetail = msgspec.field(name="progressDetail")
    id: str


class PullStatusLine(msgspec.Struct, frozen=True, kw_only=True):
    """The last ``download-service-stream`` line on success: ``{"status": "Status: Downloaded image for <ref>"}``."""

    status: str


class PullErrorDetail(msgspec.Struct, frozen=True, kw_only=True):
    message: str


class PullErrorLine(msgspec.Struct, frozen=True, kw_only=True):
    """The last ``download-service-stream`` line on failure, as Docker reports a pull error."""

    error: str
    error_detail: PullErrorDetail = msgspec.field(name="errorDetail")
