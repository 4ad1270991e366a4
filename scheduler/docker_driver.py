"""The scheduler's only door to Docker: aiodocker calls in, typed Structs out, DockerError mapped to AppError.

Labels identify premd's containers (``io.premd.*``); this module owns their names and parses them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shlex
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

import aiodocker
import aiohttp
import msgspec
from aiodocker.events import DockerEvents

from common.docker_host import NO_CONNECTION_STATUS, docker_host
from common.errors import (
    AppError,
    Code,
    ConflictError,
    InternalError,
    InvalidError,
    NotFoundError,
    UnavailableError,
)

logger = logging.getLogger(__name__)

LABEL_MANAGED = "io.premd.managed"
LABEL_INSTANCE = "io.premd.instance"
"""Which premd (one per JetStream store) owns the container: several may share a Docker engine."""
LABEL_SERVICE = "io.premd.service"
LABEL_OPERATION = "io.premd.operation"
LABEL_GENERATION = "io.premd.generation"
_UNTAGGED = "<none>:<none>"
LABEL_HOME = "io.premd.home"
"""Where the premd that made the container keeps its state (data dir, or NATS URL): an instance id that
changed at the same home is this premd after its data was wiped, not another premd sharing the engine."""
LABEL_GPUS = "io.premd.gpus"
"""Comma-separated GPU UUIDs the container was given (empty for CPU services)."""


class ContainerInfo(msgspec.Struct, frozen=True, kw_only=True):
    """One container as listed by Docker, with premd's labels parsed."""

    id: str
    name: str
    image: str
    state: str
    """Docker's state: created, running, restarting, paused, exited, dead, removing."""
    managed: bool
    """Carries premd's labels (False for a premd-compatible container found by name only)."""
    instance: str | None = None
    home: str | None = None
    service_id: str | None = None
    operation_id: str | None = None
    generation: int = 0
    gpus: list[str] = msgspec.field(default_factory=list)
    host_port: int | None = None
    volume_name: str | None = None
    created: float = 0.0

    @property
    def running(self) -> bool:
        return self.state in ("running", "restarting", "paused")


class ContainerStatus(msgspec.Struct, frozen=True, kw_only=True):
    """A container's run state from inspect."""

    id: str
    status: str
    running: bool
    exit_code: int | None
    error: str = ""
    oom_killed: bool = False
    device_requests: list[dict[str, Any]] = msgspec.field(default_factory=list)


class ImageInfo(msgspec.Struct, frozen=True):
    id: str
    tags: list[str]
    size: int


class DanglingImage(msgspec.Struct, frozen=True):
    id: str
    repositories: list[str]
    """Where it was pulled from (its RepoDigests): an image built here has none."""
    size: int


class PullEvent(msgspec.Struct, frozen=True):
    """One line of Docker's pull stream (only the fields progress needs)."""

    status: str
    id: str = ""
    current: int = 0
    total: int = 0


class DockerEvent(msgspec.Struct, frozen=True):
    kind: str
    """"container" or "image"."""
    action: str
    object_id: str
    name: str
    labels: dict[str, str]


class ContainerSpec(msgspec.Struct, frozen=True, kw_only=True):
    """Everything a service container is created from."""

    name: str
    image: str
    instance: str
    service_id: str
    operation_id: str
    generation: int
    home: str = ""
    env: list[str] = msgspec.field(default_factory=list)
    command: str | None = None
    container_port: int | None = None
    host_ip: str = "127.0.0.1"
    host_port: int | None = None
    volume_name: str | None = None
    volume_path: str | None = None
    gpu_uuids: list[str] = msgspec.field(default_factory=list)
    restart_policy: str = "no"


def _split(command: str) -> list[str]:
    """A manifest's command line as argv (shell quoting rules); a malformed one is the manifest's error."""
    try:
        return shlex.split(command)
    except ValueError as exc:
        raise InvalidError(Code.BAD_REQUEST, f"command {command!r}: {exc}") from None


def service_labels(instance: str, service_id: str) -> dict[str, str]:
    return {LABEL_MANAGED: "true", LABEL_INSTANCE: instance, LABEL_SERVICE: service_id}


def container_config(spec: ContainerSpec) -> dict[str, Any]:
    """The Docker create body: no auto-remove (crash logs survive), ports on one host address, GPUs by UUID."""
    labels = service_labels(spec.instance, spec.service_id) | {
        LABEL_OPERATION: spec.operation_id,
        LABEL_GENERATION: str(spec.generation),
        LABEL_GPUS: ",".join(spec.gpu_uuids),
    }
    if spec.home:
        labels[LABEL_HOME] = spec.home
    host: dict[str, Any] = {"AutoRemove": False, "RestartPolicy": {"Name": spec.restart_policy}}
    config: dict[str, Any] = {"Image": spec.image, "Env": list(spec.env), "Labels": labels, "HostConfig": host}
    if spec.command:
        config["Cmd"] = _split(spec.command)
    if spec.container_port is not None:
        key = f"{spec.container_port}/tcp"
        config["ExposedPorts"] = {key: {}}
        port = "" if spec.host_port is None else str(spec.host_port)
        host["PortBindings"] = {key: [{"HostIp": spec.host_ip, "HostPort": port}]}
    if spec.volume_name and spec.volume_path:
        host["Binds"] = [f"{spec.volume_name}:{spec.volume_path}:rw"]
    if spec.gpu_uuids:
        host["DeviceRequests"] = [
            {"Driver": "nvidia", "Count": 0, "DeviceIDs": list(spec.gpu_uuids), "Capabilities": [["gpu"]]}
        ]
    return config


@contextlib.contextmanager
def _mapped(what: str, host: str, not_found: Code = Code.CONTAINER_NOT_FOUND) -> Iterator[None]:
    """Translate aiodocker / connection failures and timeouts into premd's error codes (naming the engine)."""
    try:
        yield
    except aiodocker.DockerError as exc:
        message = f"{what}: {exc.message}"
        if exc.status == NO_CONNECTION_STATUS:
            raise UnavailableError(Code.DOCKER_UNAVAILABLE, f"{what}: no Docker engine answers at {host}") from None
        if exc.status == 404:
            raise NotFoundError(not_found, message) from None
        if exc.status == 409:
            raise ConflictError(Code.DOCKER_ERROR, message) from None
        raise InternalError(Code.DOCKER_ERROR, message) from None
    except (aiohttp.ClientConnectionError, FileNotFoundError, ConnectionError) as exc:
        raise UnavailableError(Code.DOCKER_UNAVAILABLE, f"{what}: no Docker engine answers at {host} ({exc})") from None
    except TimeoutError:
        raise UnavailableError(
            Code.DOCKER_UNAVAILABLE, f"{what}: the Docker engine at {host} did not answer in time"
        ) from None


def _container_info(raw: Mapping[str, Any]) -> ContainerInfo:
    labels: dict[str, str] = raw.get("Labels") or {}
    names = raw.get("Names") or []
    ports = [p for p in raw.get("Ports") or [] if p.get("PublicPort")]
    mounts = [m for m in raw.get("Mounts") or [] if m.get("Name")]
    generation = labels.get(LABEL_GENERATION, "0")
    return ContainerInfo(
        id=raw["Id"],
        name=names[0].lstrip("/") if names else "",
        image=raw.get("Image", ""),
        state=raw.get("State", ""),
        managed=labels.get(LABEL_MANAGED) == "true",
        instance=labels.get(LABEL_INSTANCE),
        home=labels.get(LABEL_HOME),
        service_id=labels.get(LABEL_SERVICE),
        operation_id=labels.get(LABEL_OPERATION),
        generation=int(generation) if generation.isdigit() else 0,
        gpus=[u for u in labels.get(LABEL_GPUS, "").split(",") if u],
        host_port=int(ports[0]["PublicPort"]) if ports else None,
        volume_name=mounts[0]["Name"] if mounts else None,
        created=float(raw.get("Created", 0)),
    )


class DockerDriver:
    """Async Docker operations the scheduler needs; every method raises AppError, never DockerError."""

    def __init__(
        self, docker: aiodocker.Docker | None = None, *, timeout_s: float = 30.0, stream_idle_s: float = 600.0
    ) -> None:
        self.host = docker_host() if docker is None else str(getattr(docker, "_connection_info", docker.docker_host))
        """The engine's address (named in every ``docker.unavailable`` message)."""
        # Every call is bounded (a hung engine must not wedge set-up, reconcile or an endpoint); streams set
        # their own (see _stream, _unbounded). Connecting is always bounded.
        self._call = aiohttp.ClientTimeout(total=timeout_s, sock_connect=timeout_s)
        self._stream = aiohttp.ClientTimeout(total=None, sock_connect=timeout_s, sock_read=stream_idle_s)
        self._unbounded = aiohttp.ClientTimeout(total=None, sock_connect=timeout_s, sock_read=None)
        self._docker = docker or aiodocker.Docker(url=self.host, timeout=self._call)

    def _mapped(self, what: str, not_found: Code = Code.CONTAINER_NOT_FOUND) -> contextlib.AbstractContextManager[None]:
        return _mapped(what, self.host, not_found)

    async def close(self) -> None:
        await self._docker.close()

    # ------------------------------------------------------------ engine

    async def root_dir(self) -> str:
        """Where Docker stores images (for disk facts)."""
        with self._mapped("docker info"):
            info: Mapping[str, Any] = await self._docker.system.info()
        return str(info.get("DockerRootDir") or "/var/lib/docker")

    # ------------------------------------------------------------ images

    async def images(self) -> list[ImageInfo]:
        with self._mapped("list images"):
            raw: list[dict[str, Any]] = await self._docker.images.list()
        return [ImageInfo(i["Id"], [t for t in i.get("RepoTags") or [] if t != _UNTAGGED], i["Size"]) for i in raw]

    async def image(self, ref: str) -> ImageInfo | None:
        try:
            with self._mapped(f"inspect image {ref}", Code.IMAGE_NOT_FOUND):
                raw: dict[str, Any] = await self._docker.images.inspect(ref)
        except NotFoundError:
            return None
        return ImageInfo(raw["Id"], raw.get("RepoTags") or [], raw.get("Size", 0))

    async def pull(self, ref: str) -> AsyncIterator[PullEvent]:
        """Docker's pull stream; a failed pull raises AppError(image.pull_failed) with Docker's reason."""
        try:
            # Bounded by silence, not by length: a large pull takes as long as it takes.
            pulling = self._docker.images.pull(ref, stream=True, timeout=self._stream)  # type: ignore[call-overload]
            async for item in pulling:
                detail = item.get("progressDetail") or {}
                yield PullEvent(
                    status=str(item.get("status", "")),
                    id=str(item.get("id", "")),
                    current=int(detail.get("current") or 0),
                    total=int(detail.get("total") or 0),
                )
        except aiodocker.DockerError as exc:
            if exc.status == NO_CONNECTION_STATUS:
                raise UnavailableError(
                    Code.DOCKER_UNAVAILABLE, f"pull {ref}: no Docker engine answers at {self.host}"
                ) from None
            raise AppError(Code.PULL_FAILED, f"pull {ref}: {exc.message}") from None
        except (aiohttp.ClientConnectionError, ConnectionError) as exc:
            raise UnavailableError(
                Code.DOCKER_UNAVAILABLE, f"pull {ref}: no Docker engine answers at {self.host} ({exc})"
            ) from None
        except TimeoutError:
            raise UnavailableError(
                Code.DOCKER_UNAVAILABLE, f"pull {ref}: the Docker engine at {self.host} stopped reporting progress"
            ) from None

    async def remove_image(self, ref: str) -> bool:
        """Force-remove an image; False when it was not there."""
        try:
            with self._mapped(f"remove image {ref}", Code.IMAGE_NOT_FOUND):
                await self._docker.images.delete(ref, force=True)
        except NotFoundError:
            return False
        return True

    async def dangling_images(self) -> list[DanglingImage]:
        """Untagged images no container uses a tag of, with the repositories they were pulled from."""
        params = {"filters": json.dumps({"dangling": ["true"]})}
        with self._mapped("list dangling images"):
            raw: list[dict[str, Any]] = await self._docker._query_json("images/json", params=params)
        return [
            DanglingImage(i["Id"], sorted({d.split("@", 1)[0] for d in i.get("RepoDigests") or []}), i.get("Size", 0))
            for i in raw
        ]

    async def remove_unused_image(self, image_id: str) -> bool:
        """Remove an image unless a container uses it (no force): False when it stays."""
        try:
            with self._mapped(f"remove image {image_id}", Code.IMAGE_NOT_FOUND):
                await self._docker.images.delete(image_id, force=False)
        except (NotFoundError, ConflictError):
            return False
        return True

    # ------------------------------------------------------------ containers

    async def containers(self) -> list[ContainerInfo]:
        """Every container on the host (premd's are picked by the caller: labels, or a service id as name)."""
        with self._mapped("list containers"):
            raw: list[dict[str, Any]] = await self._docker._query_json("containers/json", params={"all": "1"})
        return [_container_info(c) for c in raw]

    async def status(self, container_id: str) -> ContainerStatus | None:
        try:
            with self._mapped(f"inspect container {container_id}"):
                raw: dict[str, Any] = await self._docker._query_json(f"containers/{container_id}/json")
        except NotFoundError:
            return None
        state = raw.get("State") or {}
        running = bool(state.get("Running"))
        return ContainerStatus(
            id=raw["Id"],
            status=str(state.get("Status", "")),
            running=running,
            exit_code=None if running else int(state.get("ExitCode", 0)),
            error=str(state.get("Error") or ""),
            oom_killed=bool(state.get("OOMKilled")),
            device_requests=(raw.get("HostConfig") or {}).get("DeviceRequests") or [],
        )

    async def create(self, spec: ContainerSpec) -> str:
        with self._mapped(f"create container {spec.name}", Code.IMAGE_NOT_DOWNLOADED):
            container = await self._docker.containers.create(container_config(spec), name=spec.name)
        return str(container.id)

    async def start(self, container_id: str) -> None:
        with self._mapped(f"start container {container_id}"):
            await self._docker.containers.container(container_id).start()

    async def restart(self, container_id: str, timeout_s: int = 10) -> None:
        with self._mapped(f"restart container {container_id}"):
            bound = aiohttp.ClientTimeout(total=self._call.total + timeout_s if self._call.total else None)
            await self._docker.containers.container(container_id).restart(t=timeout_s, timeout=bound)

    async def kill(self, container_id: str) -> None:
        with contextlib.suppress(NotFoundError, ConflictError), self._mapped(f"kill container {container_id}"):
            await self._docker.containers.container(container_id).kill(timeout=self._call)

    async def remove(self, container_id: str) -> bool:
        """Force-remove (kills a running one); volumes are kept. False when it was already gone."""
        try:
            with self._mapped(f"remove container {container_id}"):
                await self._docker.containers.container(container_id).delete(force=True, timeout=self._call)
        except NotFoundError:
            return False
        except ConflictError as exc:
            if "already in progress" in exc.message:
                return True
            raise
        return True

    async def logs_tail(self, container_id: str, lines: int = 20) -> list[str]:
        try:
            with self._mapped(f"logs of {container_id}"):
                chunks: list[str] = await self._docker.containers.container(container_id).log(
                    stdout=True, stderr=True, tail=str(lines), timeout=self._call
                )
        except AppError:
            return []
        return "".join(chunks).splitlines()[-lines:]

    # --- cli: service logs (issue 12) ---
    async def logs(self, container_id: str, tail: int | None = None) -> list[str]:
        """The container's log lines (stdout and stderr), the last ``tail`` of them when given."""
        with self._mapped(f"logs of {container_id}"):
            chunks: list[str] = await self._docker.containers.container(container_id).log(
                stdout=True, stderr=True, tail="all" if tail is None else str(tail), timeout=self._call
            )
        return "".join(chunks).splitlines()

    def follow_logs(self, container_id: str, tail: int | None = None) -> AsyncIterator[str]:
        """The last ``tail`` lines, then new ones as the container writes them; ends when the container stops."""
        return self._follow(container_id, "all" if tail is None else str(tail))

    async def _follow(self, container_id: str, tail: str) -> AsyncIterator[str]:
        with self._mapped(f"logs of {container_id}"):
            stream = self._docker.containers.container(container_id).log(
                stdout=True,
                stderr=True,
                follow=True,
                tail=tail,
                timeout=self._unbounded,  # a quiet log is no fault
            )
            async for chunk in stream:
                yield chunk

    async def exec(self, container_id: str, command: str) -> int | None:
        """Run a command in the container, wait for it, return its exit code."""
        argv = _split(command)
        with self._mapped(f"exec in {container_id}"):
            container = self._docker.containers.container(container_id)
            ex = await container.exec(argv, stdout=True, stderr=True)
            async with ex.start(detach=False) as stream:
                while await stream.read_out() is not None:
                    pass
            info: dict[str, Any] = await ex.inspect()
        code = info.get("ExitCode")
        return int(code) if code is not None else None

    async def stats(self, container_id: str) -> dict[str, Any]:
        """One stats document with precpu filled (Docker samples twice, ~1 s, without blocking the loop)."""
        with self._mapped(f"stats of {container_id}"):
            container = self._docker.containers.container(container_id)
            docs: list[dict[str, Any]] = await container.stats(stream=False, timeout=self._call)
        return docs[0] if docs else {}

    async def prune_containers(self, instance: str) -> tuple[int, int]:
        """This premd's stopped containers only (by label), never the rest of the host."""
        labels = [f"{LABEL_MANAGED}=true", f"{LABEL_INSTANCE}={instance}"]
        with self._mapped("prune containers"):
            result: dict[str, Any] = await self._docker.containers.prune(filters={"label": labels})
        return len(result.get("ContainersDeleted") or []), int(result.get("SpaceReclaimed") or 0)

    # ------------------------------------------------------------ volumes

    async def ensure_volume(self, name: str, instance: str, service_id: str) -> None:
        with self._mapped(f"create volume {name}"):
            body = json.dumps({"Name": name, "Labels": service_labels(instance, service_id)})
            await self._docker._query_json("volumes/create", method="POST", data=body)

    async def volumes(self, *, dangling: bool = False) -> list[tuple[str, dict[str, str]]]:
        """(name, labels) of volumes; dangling: only those no container uses."""
        params = {"filters": json.dumps({"dangling": ["true"]})} if dangling else {}
        with self._mapped("list volumes"):
            raw: dict[str, Any] = await self._docker._query_json("volumes", params=params)
        return [(v["Name"], v.get("Labels") or {}) for v in raw.get("Volumes") or []]

    async def remove_volume(self, name: str) -> bool:
        """False when it did not exist; a volume in use is a conflict."""
        try:
            with self._mapped(f"remove volume {name}", Code.VOLUME_NOT_FOUND):
                async with self._docker._query(f"volumes/{name}", method="DELETE"):
                    pass
        except NotFoundError:
            return False
        return True

    # ------------------------------------------------------------ events

    async def events(self) -> AsyncIterator[DockerEvent]:
        """Container and image events until the stream ends (the caller re-subscribes and relists)."""
        source = DockerEvents(self._docker)  # type: ignore[no-untyped-call]
        filters = json.dumps({"type": ["container", "image"]})
        subscriber = source.subscribe(filters=filters)  # type: ignore[no-untyped-call]
        try:
            while True:
                item = await subscriber.get()
                if item is None:
                    return
                actor = item.get("Actor") or {}
                attributes: dict[str, str] = actor.get("Attributes") or {}
                yield DockerEvent(
                    kind=str(item.get("Type") or ""),
                    action=str(item.get("Action") or item.get("status") or ""),
                    object_id=str(actor.get("ID") or item.get("id") or ""),
                    name=attributes.get("name", ""),
                    labels={k: v for k, v in attributes.items() if k.startswith("io.premd.")},
                )
        finally:
            # stop() re-raises what ended the stream (the engine went away): the caller relists anyway.
            with contextlib.suppress(Exception):
                await source.stop()  # type: ignore[no-untyped-call]
