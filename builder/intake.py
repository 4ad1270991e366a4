"""Uploads: check the zip the gateway stored, keep it under its content ID, record the package, queue its build.

Order (each step safe to crash after): inspect (a refusal deletes the upload: nothing is kept); create the KV
record under compare-and-set (the one winner of identical uploads at once; the others join its build); store the
zip; enqueue the job with Nats-Msg-Id (a duplicate is dropped by the stream). A crash between the record and the
job is repaired at start: every queued record is enqueued again (same Nats-Msg-Id) and the worker skips jobs
whose record says they are done.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
import time
from pathlib import Path

import msgspec
from nats.js import JetStreamContext

from builder.package import InspectedPackage, PackageLimits, inspect_package
from builder.store import PackageStore, not_found
from common import codec, subjects
from common.messages import Ack, BuildJob, DeletePackage, PackageAccepted, PackageRecord, UploadPackage

logger = logging.getLogger(__name__)


class Intake:
    def __init__(self, js: JetStreamContext, store: PackageStore, limits: PackageLimits, work_dir: Path) -> None:
        self._js = js
        self._store = store
        self._limits = limits
        self._work_dir = work_dir
        self._locks: dict[str, asyncio.Lock] = {}

    async def upload(self, cmd: UploadPackage) -> PackageAccepted:
        self._work_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix="upload-", dir=self._work_dir))
        try:
            zip_path = tmp / "package.zip"
            await self._store.fetch_upload(cmd.upload, zip_path)
            try:
                pkg = await asyncio.to_thread(inspect_package, zip_path, self._limits)
            except BaseException:
                await self._store.drop_upload(cmd.upload)
                raise
            lock = self._locks.setdefault(pkg.id, asyncio.Lock())
            async with lock:
                return await self._accept(pkg, zip_path, cmd)
        finally:
            await self._store.drop_upload(cmd.upload)
            shutil.rmtree(tmp, ignore_errors=True)

    async def _accept(self, pkg: InspectedPackage, zip_path: Path, cmd: UploadPackage) -> PackageAccepted:
        existing, _ = await self._store.get(pkg.id)
        if existing is not None and existing.status != "failed":
            return PackageAccepted(package=existing, created=False)
        now = time.time()
        if existing is not None:  # a failed package uploaded again: its next build attempt (same stored zip)
            record = await self._store.transition(pkg.id, _retry)
            await self.enqueue(record)
            return PackageAccepted(package=record, created=True)
        record = PackageRecord(
            id=pkg.id,
            name=pkg.config.name,
            status="queued",
            stage="building",
            config=pkg.config,
            id_scheme=pkg.id_scheme,
            zip_sha256=cmd.sha256,
            zip_size=cmd.size,
            created_at=now,
            updated_at=now,
            warnings=list(pkg.warnings),
        )
        # The zip first: a record always has its zip (a crash in between leaves an unreferenced object only).
        await self._store.put_zip(pkg.id, zip_path)
        if not await self._store.create(record):
            winner, _ = await self._store.get(pkg.id)
            if winner is None:
                raise not_found(pkg.id)
            return PackageAccepted(package=winner, created=False)
        await self.enqueue(record)
        logger.info("package %s (%s) queued", pkg.id, pkg.config.name)
        return PackageAccepted(package=record, created=True)

    async def enqueue(self, record: PackageRecord) -> None:
        job = BuildJob(package_id=record.id, attempt=record.attempt)
        await self._js.publish(
            subjects.build_job(record.id),
            codec.encode(job),
            headers={"Nats-Msg-Id": subjects.build_job_msg_id(record.id, record.attempt)},
        )

    async def requeue_unfinished(self) -> int:
        """At start: queue again every package whose build may have been lost (see the module docstring)."""
        count = 0
        for record in await self._store.all():
            if record.status == "queued":
                await self.enqueue(record)
                count += 1
        return count

    async def delete(self, cmd: DeletePackage) -> Ack:
        record, _ = await self._store.get(cmd.package_id)
        if record is None:
            raise not_found(cmd.package_id)
        await self._store.delete(cmd.package_id)
        return Ack(message=f"Package {cmd.package_id} deleted.")


def _retry(record: PackageRecord) -> PackageRecord:
    return msgspec.structs.replace(
        record,
        status="queued",
        stage="building",
        error="",
        error_code="",
        attempt=record.attempt + 1,
        artifacts=[],
        timings={},
        updated_at=time.time(),
    )
