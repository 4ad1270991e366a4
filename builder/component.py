"""The builder component: package uploads and deletions on the bus, and the build worker."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from builder.docker_driver import BuilderDocker
from builder.intake import Intake
from builder.package import PackageLimits
from builder.pipeline import Pipeline
from builder.store import PackageStore
from builder.worker import Worker
from common import bus, subjects
from common.component import ServiceComponent
from common.messages import Ack, DeletePackage, PackageAccepted, UploadPackage

logger = logging.getLogger(__name__)


class Builder(ServiceComponent):
    name = subjects.BUILDER
    description = "premd builder: checks, builds, tests and publishes model packages"

    _worker_task: asyncio.Task[None] | None = None

    async def setup(self) -> None:
        self.store = await PackageStore.open(self.js)
        self.docker = BuilderDocker()
        self.pipeline = Pipeline(self.settings, self.js, self.store, self.docker)
        self.intake = Intake(self.js, self.store, PackageLimits.from_settings(self.settings), self.pipeline.work_dir)
        if requeued := await self.intake.requeue_unfinished():
            logger.info("%d queued package(s) enqueued again", requeued)
        self.worker = Worker(self.js, self.pipeline, self.settings.builder_job_ack_wait_s)
        self._worker_task = asyncio.create_task(self.worker.run(), name="builder.worker")

    async def teardown(self) -> None:
        if self._worker_task is not None:
            self._worker_task.cancel()  # a job in flight is handed back (nak) for the next builder
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker_task
        await self.docker.close()

    def endpoints(self) -> list[bus.Endpoint]:
        return [
            bus.endpoint("package_upload", subjects.PACKAGE_UPLOAD, UploadPackage, self._upload),
            bus.endpoint("package_delete", subjects.PACKAGE_DELETE, DeletePackage, self._delete),
        ]

    async def _upload(self, cmd: UploadPackage) -> PackageAccepted:
        return await self.intake.upload(cmd)

    async def _delete(self, cmd: DeletePackage) -> Ack:
        return await self.intake.delete(cmd)
