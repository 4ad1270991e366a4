"""The Prem Registry manifest format (docs/architecture.md, "Validation"), as msgspec types.

Field names stay camelCase on the wire, exactly as registries write them.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

import msgspec

SERVICE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$"
"""A service id names a container, a volume and a NATS subject token: keep it to safe characters."""
SERVICE_ID_RE = re.compile(SERVICE_ID_PATTERN)
ServiceId = Annotated[str, msgspec.Meta(pattern=SERVICE_ID_PATTERN)]
Port = Annotated[int, msgspec.Meta(ge=1, le=65535)]


class ImageEntry(msgspec.Struct, frozen=True, forbid_unknown_fields=False):
    image: str
    size: int = 0
    """Bytes, as the registry states it."""


class DockerImages(msgspec.Struct, frozen=True):
    cpu: ImageEntry | None = None
    gpu: ImageEntry | None = None


class Manifest(msgspec.Struct, frozen=True, rename="camel", omit_defaults=True):
    """One service of a registry. Unknown keys are kept by the catalog beside this struct (CatalogEntry.extra)."""

    id: ServiceId
    name: str
    interfaces: list[str]
    model_info: dict[str, Any] = msgspec.field(default_factory=dict)
    docker_images: DockerImages | None = None
    """Missing for desktop-only (binary) services: those are listed as unsupported."""
    default_port: Port | None = None
    """Port inside the container."""
    default_external_port: Port | None = None
    """First host port to try."""
    description: str | None = None
    documentation: str | None = None
    icon: str | None = None
    banner: str | None = None
    beta: bool = False
    coming_soon: bool = False
    volume_path: str | None = None
    env_variables: list[str] | None = None
    command: str | None = None
    exec_commands: list[str] | None = None
    prompt_template: str | None = None
    service_type: str | None = None
    """Absent (or "docker") for container services; "binary" for the desktop app's native services."""
    skip_health_check: bool = False
    version: str | None = None
    """Desktop-only (binary) services: the service's version."""
    weights_directory_url: str | None = None
    weights_files: list[str] | None = None
    binaries_url: dict[str, str | None] | None = None
    """Desktop-only: download URL per target triple (``aarch64-apple-darwin``, ...)."""
    serve_command: str | None = None
    petals: bool = False
    petals_id: str | None = msgspec.field(default=None, name="petals_id")
    """Spelled snake_case in the registries, unlike every other key."""
    readiness_timeout_s: float | None = None
    """premd extension: per-service readiness deadline override."""
    readiness_check: Literal["http", "tcp"] | None = None
    """premd extension: how readiness is checked: ``http`` (``GET /v1/`` must answer 2xx or 400), ``tcp`` (the
    port accepts and holds a connection). Unset: HTTP, falling back to TCP when ``/v1/`` answers 404."""
    # --- security (issue 10) ---
    proxy_sandbox: bool = True
    """premd extension: ``false`` serves the service's pages under ``/proxy/<id>/`` without the
    ``Content-Security-Policy: sandbox`` premd adds, i.e. with premd's own origin (see docs/security.md)."""

    def memory_requirements_mib(self) -> int | None:
        value = self.model_info.get("memoryRequirements")
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    def is_docker(self) -> bool:
        return self.docker_images is not None and self.service_type in (None, "docker")


MANIFEST_KEYS = frozenset(field.encode_name for field in msgspec.structs.fields(Manifest))
"""Every key Manifest knows, as spelled on the wire; any other key of a raw manifest is kept as an extra."""
