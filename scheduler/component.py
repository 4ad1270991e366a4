"""The scheduler component: the only process that drives Docker for services.

Endpoints decode commands and hand them to the operations; background loops keep host facts and the
observed state current and converge Docker to the desired state.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from typing import Protocol

from nats.aio.client import Client as NATS
from nats.js.kv import KeyValue

from common import bus, codec, subjects
from common.catalog import CatalogView
from common.component import ServiceComponent
from common.errors import AppError, Code, ConflictError, InvalidError
from common.jetstream import kv_bucket
from common.messages import (
    Ack,
    CancelPull,
    ContainerStatsList,
    Empty,
    GetContainerStats,
    GpuInfo,
    GPUStats,
    HostFacts,
    OperationAccepted,
    OSStats,
    PullImage,
    ReadLogs,
    RemoveImage,
    RemoveVolume,
    RenewLogs,
    RestartService,
    ServiceLogs,
    ServiceStopped,
    StartService,
    StopService,
)
from common.settings import Settings
from scheduler.deps import Deps
from scheduler.docker_driver import LABEL_INSTANCE, LABEL_MANAGED, DockerDriver
from scheduler.events import EventPublisher
from scheduler.gpu import GpuProbe, gpu_stats
from scheduler.host import CpuSampler, os_stats, read_host_facts
from scheduler.logs import ServiceLogReader
from scheduler.operations import Operations
from scheduler.ports import PortAllocator
from scheduler.pulls import Pulls
from scheduler.reconcile_loop import Reconciler
from scheduler.reconcile_rules import known_services, owner
from scheduler.state import DesiredStore, ObservedStore, instance_id, normalize_ref, split_ref
from scheduler.stats import container_stats
from scheduler.tasks import TaskOwner

logger = logging.getLogger(__name__)

DEFAULT_DOCKER_ROOT = "/var/lib/docker"
PREMD_VOLUME_RE = re.compile(r"^prem-[A-Za-z0-9][A-Za-z0-9_-]*-data$")
SLOW_CONCURRENCY = 8
"""Requests answered at once by endpoints whose work takes seconds (stats sample, stop-all, prune, image removal)."""
COMMAND_CONCURRENCY = 64
"""Starts and stops answered at once (reliability, issue 9). Each waits on its own service's lock, so one
service's commands keep their order whatever the bound; the bound only caps the tasks a burst can create.

Why 64, from two facts rather than from the machine (so not a setting):
- enough: under a burst a handler takes up to about a second (its Docker calls queue in the engine). In the
  load test (tests/integration/test_fault_load.py: 100 concurrent commands over 20 services) 34 of 100 were
  still unanswered at the 10 s request deadline when answered one at a time, 4 with a bound of 8, none with
  64: a burst of that size must be in progress together, not in a queue behind the first few;
- not more: each handler may hold a connection to the engine, and the Docker client's pool (aiohttp's
  connector default, 100 connections) is shared with the reconcile loop, the events stream, pulls, logs and
  the four slow endpoints (4 x SLOW_CONCURRENCY = 32). 64 + 32 stays under 100, so a burst of commands never
  leaves reconcile or a pull waiting for a connection.
Commands beyond the bound wait in the subscription's queue and are answered as handlers finish."""


class GpuSource(Protocol):
    def list(self) -> list[GpuInfo]: ...


class Scheduler(ServiceComponent):
    name = subjects.SCHEDULER
    description = "premd scheduler: pulls images, runs service containers, reports their state"

    def __init__(
        self, settings: Settings, nc: NATS, *, gpu_probe: GpuSource | None = None, driver: DockerDriver | None = None
    ) -> None:
        super().__init__(settings, nc)
        self.gpu_probe: GpuSource = gpu_probe or GpuProbe()
        self.driver = driver or DockerDriver(
            timeout_s=settings.docker_timeout_s, stream_idle_s=settings.docker_stream_idle_s
        )
        self.facts: HostFacts | None = None
        self._docker_root = DEFAULT_DOCKER_ROOT
        self._docker_ok = False
        self.home = settings.nats_url or os.path.abspath(settings.data_dir)
        """Where this premd's state lives (``LABEL_HOME``: named in messages about another premd's containers)."""
        self.reclaim_home = "" if settings.nats_url else self.home
        """The home at which another instance's containers are this premd's from before a wipe: only a data
        dir whose embedded NATS holds the instance id. A NATS URL names no one premd (two compose stacks on one
        engine both reach ``nats://nats:4222``; tests reuse ports), so with one only the instance label counts."""
        self._docker_seen = False
        """The engine was asked at least once (its first failure is logged; later ones only after a recovery)."""
        self._cpu = CpuSampler()
        self._facts_lock = asyncio.Lock()
        self._cpu_percent = 0.0
        self._loops = TaskOwner()
        self._work = TaskOwner()

    # ------------------------------------------------------------ lifecycle

    async def setup(self) -> None:
        self.catalog = CatalogView(self.js)
        await self.catalog.start()
        self._host_kv: KeyValue = await kv_bucket(self.js, subjects.KV_HOST)
        desired_kv = await kv_bucket(self.js, subjects.KV_DESIRED)
        self.instance = await instance_id(desired_kv)
        desired = DesiredStore(desired_kv)
        observed = ObservedStore(await kv_bucket(self.js, subjects.KV_OBSERVED))
        await desired.load()
        await observed.load()
        await self.refresh_facts()
        deps = Deps(
            settings=self.settings,
            driver=self.driver,
            catalog=self.catalog,
            desired=desired,
            observed=observed,
            events=EventPublisher(self.js),
            tasks=self._work,
            facts=lambda: self.facts,
            ports=PortAllocator(self.settings.service_host),
            instance=self.instance,
            home=self.home,
            reclaim_home=self.reclaim_home,
        )
        self.ops = Operations(deps, on_settled=lambda: self.reconciler.kick())
        self.reconciler = Reconciler(deps, self.ops)
        self.pulls = Pulls(deps, self.ops, self._images_changed)
        self.logs = ServiceLogReader(deps, self.nc)  # cli (issue 12)
        self.catalog.entries_mirror.listeners.append(lambda _key, _value: self.reconciler.kick())
        self._loops.start(self.reconciler.run(), "reconcile")
        self._loops.start(self.reconciler.watch_docker(), "docker events")
        self._loops.start(self._facts_loop(), "host facts")
        try:  # serve once the state in KV matches Docker (or Docker said it is away; bounded: it may be slow)
            async with asyncio.timeout(self.settings.request_timeout_s):
                await self.reconciler.attempted.wait()
        except TimeoutError:
            logger.warning("first reconcile pass not done within %.0f s", self.settings.request_timeout_s)

    async def teardown(self) -> None:
        await self._loops.shutdown(0)
        await self.logs.close()
        await self._work.shutdown(self.settings.shutdown_timeout_s / 2)
        await self.catalog.stop()
        await self.driver.close()

    def endpoints(self) -> list[bus.Endpoint]:
        return [
            bus.endpoint("pull", subjects.SCHEDULER_PULL, PullImage, self._pull),
            # reliability (issue 9): a start or stop waits on the service's lock and on Docker; answered one at a
            # time, 100 concurrent commands over 20 services reached the request deadline in the load test.
            bus.endpoint("start", subjects.SCHEDULER_START, StartService, self._start, concurrency=COMMAND_CONCURRENCY),
            bus.endpoint("stop", subjects.SCHEDULER_STOP, StopService, self._stop, concurrency=COMMAND_CONCURRENCY),
            bus.endpoint("restart", subjects.SCHEDULER_RESTART, RestartService, self._restart),
            bus.endpoint("stop_all", subjects.SCHEDULER_STOP_ALL, Empty, self._stop_all, concurrency=SLOW_CONCURRENCY),
            bus.endpoint(
                "remove_image",
                subjects.SCHEDULER_REMOVE_IMAGE,
                RemoveImage,
                self._remove_image,
                concurrency=SLOW_CONCURRENCY,
            ),
            bus.endpoint("remove_volume", subjects.SCHEDULER_REMOVE_VOLUME, RemoveVolume, self._remove_volume),
            bus.endpoint("prune", subjects.SCHEDULER_PRUNE, Empty, self._prune, concurrency=SLOW_CONCURRENCY),
            bus.endpoint(
                "container_stats",
                subjects.SCHEDULER_CONTAINER_STATS,
                GetContainerStats,
                self._stats,
                concurrency=SLOW_CONCURRENCY,
            ),
            bus.endpoint("host_stats", subjects.SCHEDULER_HOST_STATS, Empty, self._host_stats),
            bus.endpoint("gpu_stats", subjects.SCHEDULER_GPU_STATS, Empty, self._gpu_stats),
            # --- cli: pull cancel, service logs (issue 12) ---
            bus.endpoint("cancel_pull", subjects.SCHEDULER_CANCEL_PULL, CancelPull, self._cancel_pull),
            bus.endpoint("logs", subjects.SCHEDULER_LOGS, ReadLogs, self._logs),
            bus.endpoint("logs_renew", subjects.SCHEDULER_LOGS_RENEW, RenewLogs, self._logs_renew),
        ]

    # ------------------------------------------------------------ host facts

    async def refresh_facts(self) -> None:
        """GPUs, memory and Docker's disk, into KV_HOST (and memory, for the fit checks)."""
        # The facts loop, pulls and image removals all refresh: one at a time, so an older reading
        # never overwrites a newer one.
        async with self._facts_lock:
            await self._refresh_facts()

    async def _refresh_facts(self) -> None:
        was_ok = self._docker_ok
        try:
            self._docker_root = await self.driver.root_dir()
            self._docker_ok = True
            if not was_ok:
                logger.info("docker: engine at %s answers", self.driver.host)
        except AppError as exc:
            if was_ok or not self._docker_seen:  # once per outage, not every refresh
                logger.warning("docker: %s", exc.message)
            self._docker_ok = False
        self._docker_seen = True
        gpus = await asyncio.to_thread(self.gpu_probe.list)
        self._cpu_percent = self._cpu.sample()
        self.facts = await asyncio.to_thread(read_host_facts, gpus, self._docker_root, self._docker_ok)
        await self._host_kv.put(subjects.HOST_FACTS_KEY, codec.encode(self.facts))

    async def _facts_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.host_facts_interval_s)  # the refresh period
            try:
                await self.refresh_facts()
            except Exception:  # boundary: keep refreshing
                logger.exception("host facts refresh failed")

    async def _images_changed(self) -> None:
        await self.reconciler.refresh_downloads()
        await self.refresh_facts()

    # ------------------------------------------------------------ commands

    async def _pull(self, cmd: PullImage) -> OperationAccepted:
        return await self.pulls.pull(cmd)

    # --- cli: pull cancel, service logs (issue 12) ---
    async def _cancel_pull(self, cmd: CancelPull) -> OperationAccepted:
        return await self.pulls.cancel(cmd)

    async def _logs(self, cmd: ReadLogs) -> ServiceLogs:
        return await self.logs.read(cmd)

    async def _logs_renew(self, cmd: RenewLogs) -> Ack:
        return await self.logs.renew(cmd)

    async def _start(self, cmd: StartService) -> OperationAccepted:
        return await self.ops.start(cmd)

    async def _stop(self, cmd: StopService) -> ServiceStopped:
        return await self.ops.stop(cmd.service_id, only_on_demand=cmd.only_on_demand, reason=cmd.reason)

    async def _restart(self, cmd: RestartService) -> OperationAccepted:
        return await self.ops.restart(cmd.service_id)

    async def _stop_all(self, _: Empty) -> Ack:
        count = await self.ops.stop_all()
        return Ack(message=f"Stopped {count} services.")

    async def _remove_image(self, cmd: RemoveImage) -> Ack:
        image, _ = self.ops.image_for(self.ops.manifest(cmd.service_id))
        removed = await self.driver.remove_image(image.image)
        await self._images_changed()
        return Ack(message=f"Image {image.image} removed." if removed else f"Image {image.image} not found.")

    async def _remove_volume(self, cmd: RemoveVolume) -> Ack:
        """Only premd's volumes (``prem-<id>-data``, or labelled by premd): never another program's data."""
        labels = dict(await self.driver.volumes()).get(cmd.name)
        if labels is None:
            return Ack(message=f"Volume {cmd.name} not found.")
        if labels.get(LABEL_MANAGED) != "true" and not PREMD_VOLUME_RE.match(cmd.name):
            raise InvalidError(Code.BAD_REQUEST, f"Volume {cmd.name} is not premd's (prem-<id>-data): not removed.")
        try:
            await self.driver.remove_volume(cmd.name)
        except ConflictError:
            raise ConflictError(Code.DOCKER_ERROR, f"Volume {cmd.name} is in use by a container.") from None
        return Ack(message=f"Volume {cmd.name} removed.")

    async def _prune(self, _: Empty) -> Ack:
        """premd's stopped containers, old versions of catalog images, premd's unused volumes. Never the rest."""
        containers, space = await self.driver.prune_containers(self.instance)
        images, image_space = await self._prune_images()
        volumes = 0
        for name, labels in await self.driver.volumes(dangling=True):
            ours = labels.get(LABEL_INSTANCE) == self.instance
            legacy = LABEL_MANAGED not in labels and PREMD_VOLUME_RE.match(name)  # made by premd (Python)
            if ours or legacy:
                try:
                    volumes += await self.driver.remove_volume(name)
                except ConflictError:  # taken into use since the listing: it is not unused any more
                    continue
        await self._images_changed()
        self.reconciler.kick()
        reclaimed = (space + image_space) / 1e6
        return Ack(
            message=f"Pruned {containers} containers, {images} images, {volumes} volumes; {reclaimed:.0f} MB reclaimed."
        )

    async def _prune_images(self) -> tuple[int, int]:
        """Dangling images pulled from a catalog service's repository (its replaced versions), none other."""
        repositories = {split_ref(normalize_ref(ref))[0] for ref in self._catalog_images()}
        removed = space = 0
        for image in await self.driver.dangling_images():
            if any(split_ref(normalize_ref(repo))[0] in repositories for repo in image.repositories):
                if await self.driver.remove_unused_image(image.id):
                    removed, space = removed + 1, space + image.size
        return removed, space

    def _catalog_images(self) -> set[str]:
        refs: set[str] = set()
        for entry in self.catalog.entries():
            images = entry.manifest.docker_images
            if images is not None:
                refs.update(e.image for e in (images.cpu, images.gpu) if e is not None)
        return refs

    # ------------------------------------------------------------ stats

    async def _stats(self, cmd: GetContainerStats) -> ContainerStatsList:
        """premd's ContainerStats for one running service or all: one-shot Docker stats, concurrently."""
        known = known_services(self.catalog.entries())
        targets = []
        for c in await self.driver.containers():
            sid = owner(c, known, self.instance, self.reclaim_home)
            if sid is not None and c.running and cmd.service_id in (None, sid):
                targets.append((sid, c))
        if cmd.service_id is not None and not targets:
            raise ConflictError(Code.SERVICE_NOT_RUNNING, f"Service {cmd.service_id} is not running.")
        docs = await asyncio.gather(*(self.driver.stats(c.id) for _, c in targets), return_exceptions=True)
        sizes = await asyncio.gather(*(self.driver.image(c.image) for _, c in targets), return_exceptions=True)
        disk_total = self.facts.disk_total_bytes if self.facts is not None else 0
        stats = []
        for (sid, _), doc, image in zip(targets, docs, sizes, strict=True):
            if isinstance(doc, BaseException):
                continue  # gone between the listing and the stats call (premd skipped errors too)
            size = image.size if image is not None and not isinstance(image, BaseException) else 0
            stats.append(container_stats(sid, doc, size, disk_total))
        return ContainerStatsList(stats=stats)

    async def _host_stats(self, _: Empty) -> OSStats:
        return await asyncio.to_thread(os_stats, self._cpu_percent, self._docker_root)

    async def _gpu_stats(self, _: Empty) -> GPUStats:
        return gpu_stats(await asyncio.to_thread(self.gpu_probe.list))
