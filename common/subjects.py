"""Every NATS name premd uses: subjects, queue groups, streams, KV and object-store buckets.

No other module spells a subject: they import it from here.
"""

from __future__ import annotations

from typing import NamedTuple

PREFIX = "premd"

# --- micro services (names answer $SRV.PING / $SRV.INFO; each is also its queue group) ---
GATEWAY = "gateway"
SCHEDULER = "scheduler"
BUILDER = "builder"
REGISTRY_SYNC = "registry_sync"
COMPONENTS = (GATEWAY, SCHEDULER, BUILDER, REGISTRY_SYNC)
SRV_PING = "$SRV.PING"
SRV_INFO = "$SRV.INFO"
SRV_STATS = "$SRV.STATS"
"""Each component's identity (instance id, version), start time and per-endpoint request/error/latency counts
come from these NATS micro discovery subjects; premd adds no info command of its own."""


def srv_info(component: str) -> str:
    """One component's $SRV.INFO (its instance ``id`` changes at every start)."""
    return f"{SRV_INFO}.{component}"


# --- registry_sync commands (request/reply) ---
REGISTRY_LIST = f"{PREFIX}.registry.list"
REGISTRY_ADD = f"{PREFIX}.registry.add"
REGISTRY_REMOVE = f"{PREFIX}.registry.remove"
REGISTRY_REFRESH = f"{PREFIX}.registry.refresh"
REGISTRY_SNAPSHOT = f"{PREFIX}.registry.snapshot"
CUSTOM_SERVICE_ADD = f"{PREFIX}.registry.custom.add"
CUSTOM_SERVICE_REMOVE = f"{PREFIX}.registry.custom.remove"

# --- scheduler commands (request/reply) ---
SCHEDULER_PULL = f"{PREFIX}.scheduler.pull"
SCHEDULER_START = f"{PREFIX}.scheduler.start"
SCHEDULER_STOP = f"{PREFIX}.scheduler.stop"
SCHEDULER_RESTART = f"{PREFIX}.scheduler.restart"
SCHEDULER_STOP_ALL = f"{PREFIX}.scheduler.stop_all"
SCHEDULER_REMOVE_IMAGE = f"{PREFIX}.scheduler.remove_image"
SCHEDULER_REMOVE_VOLUME = f"{PREFIX}.scheduler.remove_volume"
SCHEDULER_PRUNE = f"{PREFIX}.scheduler.prune"
SCHEDULER_CONTAINER_STATS = f"{PREFIX}.scheduler.stats.container"
SCHEDULER_HOST_STATS = f"{PREFIX}.scheduler.stats.host"
SCHEDULER_GPU_STATS = f"{PREFIX}.scheduler.stats.gpu"

# --- cli: pull cancel, service logs (issue 12) ---
SCHEDULER_CANCEL_PULL = f"{PREFIX}.scheduler.pull.cancel"
SCHEDULER_LOGS = f"{PREFIX}.scheduler.logs"
"""A container's log lines; with ``follow`` the scheduler publishes chunks on logs_subject(session)."""
SCHEDULER_LOGS_RENEW = f"{PREFIX}.scheduler.logs.renew"
"""Keeps a followed log session alive (the scheduler ends one not renewed in time), or ends it (``stop``)."""
LOGS_ALL = f"{PREFIX}.logs.>"
"""Every followed log's chunks (see logs_subject)."""


def logs_subject(session: str) -> str:
    """A followed log's chunks (``premd.logs.<session>``): published by the scheduler, read by the gateway."""
    return f"{PREFIX}.logs.{session}"


# --- events (fan-out; captured by the EVENTS stream for replay) ---
EVENTS_STREAM = "PREMD_EVENTS"
EVENTS_ALL = f"{PREFIX}.evt.>"
CATALOG_CHANGED = f"{PREFIX}.evt.catalog.changed"
SERVICE_EVENTS_ALL = f"{PREFIX}.evt.svc.>"


def service_event(service_id: str, operation_id: str, event_type: str) -> str:
    """Subject of one event of an operation on a service: filterable by service or operation."""
    return f"{PREFIX}.evt.svc.{service_id}.{operation_id}.{event_type}"


def service_events_filter(service_id: str) -> str:
    return f"{PREFIX}.evt.svc.{service_id}.>"


def operation_events_filter(operation_id: str) -> str:
    return f"{PREFIX}.evt.svc.*.{operation_id}.>"


# --- KV buckets ---
KV_CATALOG = "premd_catalog"
"""Merged registry snapshot: key CATALOG_META_KEY plus one key per service (catalog_key)."""
CATALOG_META_KEY = "meta"
KV_REGISTRY_CONFIG = "premd_registry_config"
"""Configured registries, custom services and each registry's last good content."""
KV_DESIRED = "premd_desired"
"""Desired state per service id (written by the scheduler's command handlers)."""
KV_OBSERVED = "premd_observed"
"""Observed state per service id (written by the scheduler only; read by the gateway)."""
KV_HOST = "premd_host"
"""Host facts (GPUs, memory, disk) key HOST_FACTS_KEY, written by the scheduler."""
HOST_FACTS_KEY = "facts"
INSTANCE_KEY = "_instance"
"""KV_DESIRED: this premd's id (not a service id), labelled on its containers so two premds sharing one
Docker engine never manage each other's containers."""

# --- object stores ---
OBJ_LOGS = "premd_logs"
OBJ_REGISTRY_CONTENT = "premd_registry_content"
"""Each registry's last good document (raw bytes; may exceed a KV value's size), by registry_sync."""


def catalog_key(service_id: str) -> str:
    return f"svc.{service_id}"


def service_id_from_catalog_key(key: str) -> str | None:
    return key[4:] if key.startswith("svc.") else None


def kv_subject(bucket: str, key: str) -> str:
    """The subject a KV bucket stores ``key`` under (JetStream's ``$KV`` convention), for pipelined writes."""
    return f"$KV.{bucket}.{key}"


# --- packages: pipeline (the builder's bus commands, build jobs, package state and events) ---
PACKAGE_UPLOAD = f"{PREFIX}.builder.upload"
"""The gateway streamed an upload into OBJ_PACKAGE_UPLOADS; the builder checks, stores and queues it."""
PACKAGE_DELETE = f"{PREFIX}.builder.delete"
BUILD_JOBS_STREAM = "PREMD_BUILD_JOBS"
"""Work-queue stream of build jobs (one message per build attempt, Nats-Msg-Id = package id + attempt)."""
BUILD_JOBS_CONSUMER = "builder"
"""The builders' shared durable pull consumer of BUILD_JOBS_STREAM."""
BUILD_JOBS_ALL = f"{PREFIX}.builder.job.*"
KV_PACKAGES = "premd_packages"
"""Package metadata (PackageRecord) by package id, written by the builder only."""
OBJ_PACKAGES = "premd_packages"
"""Each package's zip as first uploaded (byte-identical downloads), under its id."""
OBJ_PACKAGE_UPLOADS = "premd_package_uploads"
"""Uploads in flight between the gateway and the builder, under a temporary name."""
PACKAGE_EVENTS_ALL = f"{PREFIX}.evt.pkg.>"


def build_job(package_id: str) -> str:
    return f"{PREFIX}.builder.job.{package_id}"


def build_job_msg_id(package_id: str, attempt: int) -> str:
    """Nats-Msg-Id of a build job: identical uploads at once enqueue one build."""
    return f"{package_id}.{attempt}"


def package_event(package_id: str, event_type: str) -> str:
    """Subject of one event of a package's build (``state`` or ``log``)."""
    return f"{PREFIX}.evt.pkg.{package_id}.{event_type}"


def package_events_filter(package_id: str) -> str:
    return f"{PREFIX}.evt.pkg.{package_id}.>"


def package_log_object(package_id: str) -> str:
    """OBJ_LOGS name of a package's last build log (NDJSON, one PackageEvent per line)."""
    return f"pkg.{package_id}.log"


# --- bus authorization (issue 10): who may use each name above ---
# common/bus_permissions.py turns this into each bus user's permissions; it refuses to run while a stream,
# bucket or premd.* subject defined in this module is missing here (a new name cannot be forgotten). A command
# subject (under one of COMMAND_PREFIXES, and not in ACCESS) needs no entry: its component serves it,
# COMMAND_SENDERS send it. Subjects built by a function must fall under a name granted here.
READER = "reader"
"""Bus user for read-only tools: catalog, state, host facts, events."""
OPERATOR = "operator"
"""Bus user for tools that send commands (what the gateway may send) and read what the reader reads."""
ADMIN = "admin"
"""Bus user without restrictions, for the machine's owner (backups, debugging) and the tests."""
ROLES = (READER, OPERATOR, ADMIN)
USERS = (*COMPONENTS, *ROLES)

COMMAND_PREFIXES = {
    f"{PREFIX}.scheduler.": SCHEDULER,
    f"{PREFIX}.registry.": REGISTRY_SYNC,
    f"{PREFIX}.builder.": BUILDER,
}
"""Every constant subject under a prefix is a command (request/reply) served by that component."""
COMMAND_SENDERS = (GATEWAY, OPERATOR)


class Grant(NamedTuple):
    """Who writes a stream, bucket or subject (its content: publish, purge) and who only reads it."""

    writers: tuple[str, ...]
    readers: tuple[str, ...]


_STATE_READERS = (GATEWAY, READER, OPERATOR)

ACCESS: dict[str, Grant] = {
    KV_CATALOG: Grant((REGISTRY_SYNC,), (*_STATE_READERS, SCHEDULER, BUILDER)),
    KV_REGISTRY_CONFIG: Grant((REGISTRY_SYNC,), ()),
    OBJ_REGISTRY_CONTENT: Grant((REGISTRY_SYNC,), ()),
    KV_DESIRED: Grant((SCHEDULER,), _STATE_READERS),
    KV_OBSERVED: Grant((SCHEDULER,), _STATE_READERS),
    KV_HOST: Grant((SCHEDULER,), (*_STATE_READERS, BUILDER)),
    OBJ_LOGS: Grant((SCHEDULER, BUILDER), (GATEWAY, OPERATOR)),
    # Events enter the stream through the event subjects below; nobody purges or rewrites it.
    EVENTS_STREAM: Grant((), _STATE_READERS),
    EVENTS_ALL: Grant((), _STATE_READERS),
    SERVICE_EVENTS_ALL: Grant((SCHEDULER,), _STATE_READERS),
    CATALOG_CHANGED: Grant((REGISTRY_SYNC,), _STATE_READERS),
    # packages: the builder owns their records, zips (one grant: KV_PACKAGES and OBJ_PACKAGES share the name),
    # build jobs and events; the gateway streams uploads in, the builder takes them out.
    KV_PACKAGES: Grant((BUILDER,), (*_STATE_READERS, REGISTRY_SYNC)),  # ready packages join the catalog
    OBJ_PACKAGE_UPLOADS: Grant((GATEWAY, BUILDER), ()),
    BUILD_JOBS_STREAM: Grant((BUILDER,), ()),
    BUILD_JOBS_ALL: Grant((BUILDER,), ()),
    PACKAGE_EVENTS_ALL: Grant((BUILDER,), _STATE_READERS),
    # cli (issue 12): followed service logs, from the scheduler to the gateway that asked
    LOGS_ALL: Grant((SCHEDULER,), (GATEWAY,)),
}
