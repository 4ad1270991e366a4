"""Every message on premd's bus, as msgspec Structs (JSON on the wire).

Commands are VerbNoun, events NounPastTense-ish, replies NounReply. Field names are snake_case,
except inside Manifest, which keeps the registry's camelCase.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from common.manifest import Manifest, ServiceId
from common.package_config import PackageConfig


class Message(msgspec.Struct, frozen=True, kw_only=True):
    """Base of bus messages."""


class Empty(Message, frozen=True):
    """A command without arguments, or a reply without content."""


class Ack(Message, frozen=True):
    message: str = ""


class ErrorReply(Message, frozen=True):
    """Body of an error reply (the code also travels in the Nats-Service-Error-Code header)."""

    code: str
    message: str


class ServiceIdentity(Message, frozen=True):
    """What every component answers on $SRV.PING and $SRV.INFO (NATS micro; other fields are ignored)."""

    name: str
    id: str
    """The running instance: a new id at every start."""
    version: str


class EndpointStats(Message, frozen=True):
    """One endpoint's counters in a $SRV.STATS answer (times in nanoseconds)."""

    name: str
    subject: str
    num_requests: int = 0
    num_errors: int = 0
    processing_time: int = 0
    average_processing_time: int = 0
    last_error: str | None = None


class ServiceStats(Message, frozen=True):
    """A component's $SRV.STATS answer."""

    name: str
    id: str
    version: str
    started: str
    """RFC 3339 start time."""
    endpoints: list[EndpointStats] | None = None


# ---------------------------------------------------------------- registries / catalog


class SkippedEntry(Message, frozen=True):
    index: int
    id: str | None
    reason: str


RegistryHealth = Literal["ok", "error", "pending"]


class RegistryStatus(Message, frozen=True):
    url: str
    status: RegistryHealth = "pending"
    error: str | None = None
    fetched_at: float | None = None
    """Unix time of the last successful fetch (or of the bundled snapshot)."""
    etag: str | None = None
    last_modified: str | None = None
    count: int = 0
    skipped: list[SkippedEntry] = msgspec.field(default_factory=list)
    """The first 100 entries skipped (index, id, reason)."""
    skipped_total: int = 0
    """How many entries were skipped in all."""
    bundled: bool = False
    """The content is the snapshot shipped with premd, not yet replaced by a live fetch."""
    bundled_date: str | None = None
    unsupported: int = 0
    """Entries kept but not runnable by premd (desktop-only ``serviceType: "binary"`` without dockerImages)."""
    checked_at: float | None = None
    """Unix time of the last fetch attempt. Not a change by itself: the KV copy may be older than the live one."""


class CatalogEntry(Message, frozen=True):
    """One service of the merged catalog: its manifest, where it came from, and keys premd does not know."""

    manifest: Manifest
    origin: str
    """A registry URL, or "custom" for services added through the API."""
    extra: dict[str, Any] = msgspec.field(default_factory=dict)


class CatalogMeta(Message, frozen=True):
    """KV key CATALOG_META_KEY: order of services and the state of each registry."""

    generation: int
    order: list[str]
    registries: list[RegistryStatus]
    updated_at: float


class CatalogSnapshot(Message, frozen=True):
    generation: int
    services: list[CatalogEntry]
    registries: list[RegistryStatus]
    updated_at: float


class CatalogChanged(Message, frozen=True):
    generation: int
    added: list[str]
    removed: list[str]
    changed: list[str]


class AddRegistry(Message, frozen=True):
    url: str


class RemoveRegistry(Message, frozen=True):
    url: str


class RefreshRegistries(Message, frozen=True):
    url: str | None = None
    """Only this registry; all when unset."""


class RegistryList(Message, frozen=True):
    registries: list[RegistryStatus]


class RefreshResult(Message, frozen=True):
    """Reply to RefreshRegistries: the catalog generation after the refresh and what it changed.

    Not the whole snapshot: a large catalog would not fit in one message (read KV_CATALOG or REGISTRY_SNAPSHOT).
    """

    generation: int
    registries: list[RegistryStatus]
    added: list[str] = msgspec.field(default_factory=list)
    removed: list[str] = msgspec.field(default_factory=list)
    changed: list[str] = msgspec.field(default_factory=list)


class AddCustomService(Message, frozen=True):
    manifest: dict[str, Any]
    """Raw manifest JSON, validated by registry_sync (unknown keys are kept)."""


class RemoveCustomService(Message, frozen=True):
    id: str


# ---------------------------------------------------------------- scheduler: commands


class PullImage(Message, frozen=True):
    service_id: ServiceId
    force: bool = False
    """Skip the disk fit check."""


class StartService(Message, frozen=True):
    service_id: ServiceId
    force: bool = False
    """Skip the memory / GPU / disk fit checks."""
    operation_id: str | None = None
    """Idempotency: the same id twice is one operation."""
    # -- idle stop (issue 15)
    on_demand: bool = False
    """Started for a request (the gateway's autostart): the gateway may stop it when idle. A start without
    it (a user's) makes the service the user's again: never stopped for idleness."""


class StopService(Message, frozen=True):
    service_id: ServiceId
    # -- idle stop (issue 15)
    only_on_demand: bool = False
    """Refused (state.conflict, nothing changed) unless the service runs because it was started on demand."""
    reason: str = ""
    """Why it is stopped (shown in the stop's event status), e.g. "idle for 300 s"."""


class RestartService(Message, frozen=True):
    service_id: ServiceId


class RemoveImage(Message, frozen=True):
    service_id: ServiceId


class RemoveVolume(Message, frozen=True):
    name: str


class GetContainerStats(Message, frozen=True):
    service_id: ServiceId | None = None
    """All running services when unset."""


OperationKind = Literal["pull", "start", "stop", "restart", "remove_image", "remove_volume", "prune", "reconcile"]


class OperationAccepted(Message, frozen=True):
    operation_id: str
    service_id: str
    kind: OperationKind
    joined: bool = False
    """True when an operation already in flight (the same pull, the same start) was joined."""


# --- cli: pull cancel, service logs (issue 12) ---


class CancelPull(Message, frozen=True):
    service_id: ServiceId


class ReadLogs(Message, frozen=True):
    service_id: ServiceId
    tail: int | None = None
    """The last this many lines (None: all of them)."""
    follow: bool = False
    session: str | None = None
    """With ``follow``: chunks go to subjects.logs_subject(session) until the session ends."""


class ServiceLogs(Message, frozen=True):
    service_id: str
    container_id: str
    lines: list[str] = msgspec.field(default_factory=list)
    """Without ``follow``; a followed session sends its lines (the tail included) as LogChunks."""


class LogChunk(Message, frozen=True):
    session: str
    lines: list[str] = msgspec.field(default_factory=list)
    end: bool = False
    """The container's log ended (it stopped or was removed), or the session expired: nothing follows."""


class RenewLogs(Message, frozen=True):
    session: str
    stop: bool = False


class ServiceStopped(Message, frozen=True):
    service_id: str
    message: str


# ---------------------------------------------------------------- scheduler: events and state

EventType = Literal["accepted", "progress", "state", "succeeded", "failed"]
ServicePhase = Literal["stopped", "pulling", "starting", "ready", "failed", "crashloop", "stopping"]


class LayerProgress(Message, frozen=True):
    id: str
    status: str
    current: int = 0
    total: int = 0


class OperationEvent(Message, frozen=True):
    """Every step of an operation. Subject: subjects.service_event(service_id, operation_id, type)."""

    operation_id: str
    service_id: str
    kind: OperationKind
    type: EventType
    at: float
    status: str = ""
    """Human text ("Downloading", "starting container", ...)."""
    percentage: float | None = None
    """Pulls: overall, weighted by bytes, never going backwards."""
    bytes_done: int | None = None
    bytes_total: int | None = None
    rate_bps: float | None = None
    layers: list[LayerProgress] | None = None
    phase: ServicePhase | None = None
    host_port: int | None = None
    error_code: str | None = None
    message: str | None = None
    exit_code: int | None = None
    log_tail: list[str] | None = None


class DesiredState(Message, frozen=True):
    """KV_DESIRED[service_id]."""

    service_id: str
    running: bool
    generation: int
    operation_id: str
    force: bool = False
    updated_at: float = 0.0
    # -- idle stop (issue 15)
    on_demand: bool = False
    """It runs because a request started it (StartService.on_demand); the gateway stops it when idle."""


class GpuPlacement(Message, frozen=True):
    uuid: str
    index: int
    name: str


class ServiceState(Message, frozen=True):
    """KV_OBSERVED[service_id]: what the scheduler sees, for the gateway (which never asks Docker)."""

    service_id: str
    phase: ServicePhase = "stopped"
    running: bool = False
    """A container of the service is running (premd's meaning)."""
    ready: bool = False
    """It answered its health check."""
    host_port: int | None = None
    container_id: str | None = None
    image: str | None = None
    volume_name: str | None = None
    gpus: list[GpuPlacement] = msgspec.field(default_factory=list)
    downloaded: bool = False
    downloaded_image: str | None = None
    needs_update: bool = False
    operation_id: str | None = None
    last_error: str | None = None
    error_code: str | None = None
    exit_code: int | None = None
    log_tail: list[str] | None = None
    restarts: int = 0
    updated_at: float = 0.0


class GpuInfo(Message, frozen=True):
    index: int
    uuid: str
    name: str
    memory_total_mib: int
    memory_free_mib: int
    memory_used_mib: int
    utilization_pct: float | None = None


class HostFacts(Message, frozen=True):
    """KV_HOST[HOST_FACTS_KEY]: the machine's capacity, refreshed by the scheduler."""

    gpus: list[GpuInfo]
    memory_total_bytes: int
    memory_available_bytes: int
    disk_free_bytes: int
    """Free space where Docker keeps images."""
    disk_total_bytes: int
    docker_available: bool
    updated_at: float


# ---------------------------------------------------------------- stats (premd's shapes)


class ContainerStats(msgspec.Struct, frozen=True):
    id: str
    cpu_percentage: float
    memory_usage: float
    memory_limit: float
    memory_percentage: float
    storage_percentage: float
    storage_usage: float
    storage_limit: float


class ContainerStatsList(Message, frozen=True):
    stats: list[ContainerStats]


class OSStats(msgspec.Struct, frozen=True):
    cpu_percentage: float
    memory_usage: float
    memory_limit: float
    memory_percentage: float
    storage_usage: float
    storage_limit: float
    storage_percentage: float


class SingleGPU(msgspec.Struct, frozen=True):
    gpu_name: str
    total_memory: float
    used_memory: float
    free_memory: float
    utilised_memory: float
    load: float


class GPUStats(msgspec.Struct, frozen=True):
    total_memory: float | None = None
    used_memory: float | None = None
    free_memory: float | None = None
    average_utilised_memory: float | None = None
    average_load: float | None = None
    gpus: list[SingleGPU] | None = None


# ---------------------------------------------------------------- packages: pipeline (issue 8)
# PackageRecord is both the KV_PACKAGES value and the HTTP body of /v1/packages: its keys are the original model
# server's Go field names (ID, Name, Artifacts[{Target, URI}], Config) plus Status, Stage, timings and digests.

_GO_NAMES = {"id": "ID", "uri": "URI", "id_scheme": "IDScheme", "zip_sha256": "ZipSHA256"}


def _go_name(name: str) -> str:
    return _GO_NAMES.get(name) or "".join(part.capitalize() for part in name.split("_"))


PackageStatus = Literal["queued", "building", "testing", "pushing", "ready", "failed"]
PackageStage = Literal["upload", "building", "testing", "pushing", "ready"]
TestStatus = Literal["passed", "failed", "untested"]
PACKAGE_ENDED: tuple[PackageStatus, ...] = ("ready", "failed")


class PackageTestResult(msgspec.Struct, frozen=True, kw_only=True, rename=_go_name):
    """The test of one image: ``untested`` (with the reason) when it cannot run here, never ``passed``."""

    status: TestStatus
    reason: str = ""
    setup_seconds: float | None = None
    run_seconds: float | None = None
    output: str | None = None
    """What run() returned for the example (truncated)."""


class PackageArtifact(msgspec.Struct, frozen=True, kw_only=True, rename=_go_name):
    target: str
    """``docker-cpu`` or ``docker-gpu``."""
    uri: str
    """``<registry>/<name>@sha256:<digest>`` once pushed (the local tag when no push registry is set)."""
    image: str
    """The tag: ``<registry>/<name>:<id prefix>-<target>``."""
    image_id: str = ""
    digest: str = ""
    """Registry manifest digest (``sha256:...``), empty until pushed."""
    size: int = 0
    test: PackageTestResult | None = None


class PackageRecord(msgspec.Struct, frozen=True, kw_only=True, rename=_go_name):
    id: str
    name: str
    status: PackageStatus
    stage: PackageStage
    """The stage in progress, the one that failed, or ``ready``."""
    config: PackageConfig
    artifacts: list[PackageArtifact] = msgspec.field(default_factory=list)
    error: str = ""
    error_code: str = ""
    attempt: int = 1
    """Build attempt: an upload of a failed package starts the next one."""
    id_scheme: str = ""
    zip_sha256: str = ""
    """sha256 of the stored zip (the bytes of the first upload)."""
    zip_size: int = 0
    created_at: float = 0.0
    updated_at: float = 0.0
    timings: dict[str, float] = msgspec.field(default_factory=dict)
    """Seconds per stage: queued, building, testing, pushing, total."""
    warnings: list[str] = msgspec.field(default_factory=list)


class UploadPackage(Message, frozen=True):
    upload: str
    """Object name in OBJ_PACKAGE_UPLOADS (the builder deletes it once handled)."""
    size: int
    sha256: str
    """sha256 of the uploaded bytes, computed while the gateway streamed them."""


class PackageAccepted(Message, frozen=True):
    package: PackageRecord
    created: bool
    """False when the ID was known: a build in flight is shared, a ready package answered as it is."""


class DeletePackage(Message, frozen=True):
    package_id: str


class BuildJob(Message, frozen=True):
    package_id: str
    attempt: int


class PackageEvent(Message, frozen=True):
    """Subject: subjects.package_event(package_id, type). ``state``: a status change; ``log``: one log line."""

    package_id: str
    attempt: int
    type: Literal["state", "log"]
    at: float
    stage: PackageStage
    status: PackageStatus | None = None
    line: str | None = None
    error_code: str | None = None
    message: str | None = None
