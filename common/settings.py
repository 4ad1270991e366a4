"""premd's settings: one frozen Struct read from the environment once, at start-up, and passed down."""

from __future__ import annotations

import ipaddress
import logging
import os
import re
from collections.abc import Mapping
from typing import Annotated, Any

import msgspec

from common.errors import SettingsError

Port = Annotated[int, msgspec.Meta(ge=1, le=65535)]
PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]
PositiveInt = Annotated[int, msgspec.Meta(gt=0)]
_LOG_LEVELS = ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG")

OFFICIAL_REGISTRY_URL = "https://raw.githubusercontent.com/premAI-io/prem-registry/main/manifests.json"

# Origins Prem App is served from: the Tauri desktop shells and its web build on localhost.
DEFAULT_CORS_ORIGINS = (
    "tauri://localhost",
    "http://tauri.localhost",
    "https://tauri.localhost",
    "http://localhost",
    "http://localhost:*",
    "http://127.0.0.1",
    "http://127.0.0.1:*",
)


# --- packages: base images ---
# Public images with nothing but Python: the build brings its own installer (pip as a wheel), so any works.
DEFAULT_BASE_IMAGES = ("3.11=python:3.11-slim", "3.12=python:3.12-slim")
_BASE_IMAGE_KEY = re.compile(r"^3\.\d{1,2}(\+cu\d{1,2}\.\d{1,2}(\+cudnn\d{1,2})?)?$")


def parse_base_images(entries: tuple[str, ...]) -> dict[str, str]:
    """``("3.11=python:3.11-slim", "3.11+cu12.1=...")`` as a mapping; ValueError naming a malformed entry."""
    images: dict[str, str] = {}
    for entry in entries:
        key, sep, image = (part.strip() for part in entry.partition("="))
        if not sep or not image or not _BASE_IMAGE_KEY.match(key):
            raise ValueError(
                f"{entry!r} is not <python>=<image> or <python>+cu<cuda>[+cudnn<n>]=<image>"
                " (e.g. 3.11=python:3.11-slim or 3.11+cu12.1=<image with CUDA 12.1 and Python 3.11>)"
            )
        if key in images:
            raise ValueError(f"{key} is given twice")
        images[key] = image
    return images


def _default_data_dir() -> str:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "premd")


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """Every knob premd has. Environment name: ``PREMD_<FIELD>`` upper-cased, except ``registry_urls``."""

    host: str = "127.0.0.1"
    """Address the HTTP gateway binds to. Anything but loopback requires ``api_token``."""
    port: Port = 54321
    """HTTP gateway port (Prem App's default backend is http://localhost:54321/)."""
    data_dir: str = msgspec.field(default_factory=_default_data_dir)
    """Where the embedded NATS server keeps JetStream (registries, state, events)."""
    nats_url: str | None = None
    """NATS to use. Unset: ``premd serve`` starts an embedded nats-server."""
    nats_port: Port = 4222
    """Port of the embedded nats-server (loopback only)."""
    api_token: str | None = None
    """When set, every HTTP route but the health check needs ``Authorization: Bearer <token>``."""
    registry_urls: tuple[str, ...] = (OFFICIAL_REGISTRY_URL,)
    """``PREM_REGISTRY_URL``: registry URLs, whitespace-separated, as in premd."""
    registry_refresh_s: PositiveFloat = 300.0
    """How often registries are fetched again (conditional requests)."""
    registry_fetch_timeout_s: PositiveFloat = 20.0
    """Deadline for one registry fetch."""
    registry_max_bytes: PositiveInt = 64 * 1024 * 1024
    """A registry document larger than this is refused (keeps the last good content)."""
    request_timeout_s: PositiveFloat = 10.0
    """Deadline for a command sent over the bus to get its reply."""
    shutdown_timeout_s: PositiveFloat = 10.0
    """How long in-flight work may take to finish on SIGTERM before it is cancelled."""
    service_host: str = "127.0.0.1"
    """Host address service containers' ports are published on."""
    readiness_timeout_s: PositiveFloat = 600.0
    """How long a started service may take to answer its health check (per-service override in the manifest)."""
    restart_policy: str = "no"
    """Docker restart policy for service containers (the scheduler restarts crashed services itself)."""
    reconcile_interval_s: PositiveFloat = 10.0
    """Scheduler: how often Docker is relisted to converge, besides reacting to Docker events."""
    host_facts_interval_s: PositiveFloat = 5.0
    """Scheduler: how often host facts (GPUs, memory, disk) are refreshed in KV."""
    crash_backoff_s: PositiveFloat = 1.0
    """Scheduler: first delay before restarting a crashed service; doubles per crash in a row."""
    crash_backoff_max_s: PositiveFloat = 300.0
    """Scheduler: longest delay between restarts of a crash-looping service."""
    cors_origins: tuple[str, ...] = DEFAULT_CORS_ORIGINS
    """Comma-separated origins allowed by CORS and for state-changing requests; ``*`` in a port matches any port."""
    autostart: bool = False
    """OpenAI-compatible routes start a stopped service on first request and hold the request."""
    autostart_wait_s: PositiveFloat = 120.0
    """How long such a request is held while its service starts."""
    max_body_bytes: PositiveInt = 1024 * 1024
    """Largest JSON body accepted by the API routes (the proxy streams and is not limited by this)."""
    openai_max_body_bytes: PositiveInt = 64 * 1024 * 1024
    """Largest body the OpenAI-compatible routes read to find ``model`` (audio uploads included)."""
    log_level: str = "INFO"
    """Python logging level name."""
    # --- security (issue 10): bus credentials, file:// registries ---
    nats_credentials: str | None = None
    """Credentials for ``PREMD_NATS_URL``: a file as ``premd credentials`` writes, or a directory of them
    (``<component>.json``). Unset: the data directory's own, if any. The embedded NATS always uses those."""
    registry_file_dir: str | None = None
    """Directory ``file://`` registries may be read from; outside it only those in PREM_REGISTRY_URL at start."""
    # -- OpenAI clients: idle stop (issue 15)
    idle_stop_s: float = 300.0
    """A service autostarted for a request is stopped after this many seconds without requests (0: as soon as
    the last one ends; negative: never). Per request: header ``X-Premd-Keep-Alive``."""

    # --- packages: limits (checked while the upload streams and again while the zip is read) ---
    package_max_upload_bytes: PositiveInt = 1024 * 1024 * 1024
    """Largest package zip accepted by `POST /v1/packages/upload` (HTTP 413 beyond it)."""
    package_max_uncompressed_bytes: PositiveInt = 4 * 1024 * 1024 * 1024
    """Largest total size of a package's files once decompressed (counted while decompressing)."""
    package_max_entries: PositiveInt = 10000
    """Most entries (files and folders) a package zip may hold."""
    package_max_ratio: PositiveInt = 200
    """Largest decompressed/compressed size ratio of one zip entry over 1 MiB (zip bomb guard)."""

    # --- packages: base images ---
    builder_base_images: tuple[str, ...] = DEFAULT_BASE_IMAGES
    """Comma-separated `<python>=<image>` (CPU) and `<python>+cu<cuda>[+cudnn<n>]=<image>` (GPU) base images."""

    # --- packages: pipeline (builder jobs, image test, push; the gateway's upload) ---
    builder_push_registry: str = ""
    """`host[:port]` of the OCI registry package images are pushed to after their test; empty: kept local only."""
    builder_work_dir: str = ""
    """Builder scratch space (build contexts, wheelhouse cache); empty: `<data_dir>/builder`."""
    builder_job_ack_wait_s: PositiveFloat = 30.0
    """A build job not acknowledged or touched for this long (its builder died) is handed to another builder."""
    builder_setup_timeout_s: PositiveFloat = 300.0
    """Image test: longest `setup()` before the package fails at the test stage."""
    builder_run_timeout_s: PositiveFloat = 300.0
    """Image test: longest `run()` of the example inference."""
    builder_test_memory_bytes: PositiveInt = 2 * 1024 * 1024 * 1024
    """Image test: the test container's memory limit."""
    builder_build_timeout_s: PositiveFloat = 3600.0
    """Longest Docker build of one target."""
    package_upload_timeout_s: PositiveFloat = 300.0
    """Gateway: how long an upload waits for the builder to check and store the zip."""

    # --- Docker engine: call deadlines (issue 9) ---
    docker_timeout_s: PositiveFloat = 30.0
    """Deadline for one Docker API call (a hung engine fails it with `docker.unavailable`); pulls, builds, log
    follows and the event stream are bounded only by `docker_stream_idle_s` / not at all."""
    docker_stream_idle_s: PositiveFloat = 600.0
    """A pull or build whose progress stream stays silent this long is abandoned (the engine hung)."""

    def is_exposed(self) -> bool:
        """True when the gateway would listen on something other than loopback."""
        if self.host in ("localhost", ""):
            return self.host == ""
        try:
            return not ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return True  # a host name other than localhost may resolve to anything

    def check(self) -> None:
        """Cross-field rules: refuse a start that would expose Docker control to the network."""
        if self.is_exposed() and not self.api_token:
            raise SettingsError(
                "PREMD_HOST",
                f"binding to {self.host!r} exposes premd beyond this machine; set PREMD_API_TOKEN too",
            )
        if "*" in self.cors_origins and not self.api_token:
            # Any web page could then drive this machine's Docker through the browser of whoever runs premd.
            raise SettingsError("PREMD_CORS_ORIGINS", "'*' allows every web site; set PREMD_API_TOKEN too")
        if self.restart_policy not in ("no", "always", "unless-stopped", "on-failure"):
            raise SettingsError("PREMD_RESTART_POLICY", f"unknown policy {self.restart_policy!r}")
        if self.log_level.upper() not in logging.getLevelNamesMapping():
            # Checked here: logging's own error would come later, as a traceback.
            raise SettingsError(
                "PREMD_LOG_LEVEL", f"unknown level {self.log_level!r} (use one of {', '.join(_LOG_LEVELS)})"
            )
        # --- packages: base images ---
        try:
            parse_base_images(self.builder_base_images)
        except ValueError as exc:
            raise SettingsError("PREMD_BUILDER_BASE_IMAGES", str(exc)) from None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read settings; raises SettingsError naming the variable on unknown or malformed values."""
        env = os.environ if env is None else env
        names = {env_name(f): f for f in msgspec.structs.fields(cls)}
        raw: dict[str, Any] = {}
        for key in env:
            if key.startswith("PREMD_") and key not in names:
                raise SettingsError(key, "unknown setting (see the README's configuration table)")
        for key, field in names.items():
            if key not in env:
                continue
            value = env[key]
            raw[field.name] = _parse(field, value)
            try:
                # The value alone against its field's type: msgspec's sentence then names no path to strip.
                msgspec.convert(raw[field.name], field.type, strict=False)
            except msgspec.ValidationError as exc:
                raise SettingsError(key, f"{value!r} is not valid: {exc}") from None
        settings = msgspec.convert(raw, cls, strict=False)
        settings.check()
        return settings


def env_name(field: msgspec.structs.FieldInfo) -> str:
    if field.name == "registry_urls":
        return "PREM_REGISTRY_URL"
    return "PREMD_" + field.name.upper()


def _parse(field: msgspec.structs.FieldInfo, value: str) -> Any:
    text = str(field.type)
    if "tuple" in text:
        # PREM_REGISTRY_URL is whitespace-separated like premd's; other lists are comma-separated.
        parts = value.split() if field.name == "registry_urls" else value.split(",")
        return [part.strip() for part in parts if part.strip()]
    if "None" in text and value == "":
        return None
    if "str" not in text:
        return value.strip()  # "8080 " from an env file is still a port
    return value
