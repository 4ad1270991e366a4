"""Where packages live: metadata in KV_PACKAGES (compare-and-set), zips in OBJ_PACKAGES, logs in OBJ_LOGS."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

import nats.js.errors
from nats.js import JetStreamContext
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from common import codec, subjects
from common.errors import Code, NotFoundError, error_for
from common.jetstream import kv_bucket, kv_get, kv_transition
from common.messages import PackageRecord


class Gone(Exception):
    """The package was deleted while its build ran: the build stops."""


class PackageStore:
    def __init__(self, kv: KeyValue, zips: ObjectStore, uploads: ObjectStore, logs: ObjectStore) -> None:
        self.kv = kv
        self.zips = zips
        self.uploads = uploads
        self.logs = logs

    @classmethod
    async def open(cls, js: JetStreamContext) -> PackageStore:
        return cls(
            await kv_bucket(js, subjects.KV_PACKAGES),
            await js.object_store(subjects.OBJ_PACKAGES),
            await js.object_store(subjects.OBJ_PACKAGE_UPLOADS),
            await js.object_store(subjects.OBJ_LOGS),
        )

    async def get(self, package_id: str) -> tuple[PackageRecord | None, int]:
        return await kv_get(self.kv, package_id, PackageRecord)

    async def create(self, record: PackageRecord) -> bool:
        """Write a new record; False when another upload of the same ID won the race."""
        try:
            await self.kv.create(record.id, codec.encode(record))
        except nats.js.errors.KeyWrongLastSequenceError:
            return False
        return True

    async def transition(self, package_id: str, fn: Callable[[PackageRecord], PackageRecord]) -> PackageRecord:
        """Apply ``fn`` under compare-and-set; raises Gone when the record no longer exists."""

        def step(current: PackageRecord | None) -> PackageRecord:
            if current is None:
                raise Gone(package_id)
            return fn(current)

        record, _ = await kv_transition(self.kv, package_id, PackageRecord, step)
        return record

    async def all(self) -> list[PackageRecord]:
        try:
            keys = await self.kv.keys()
        except nats.js.errors.NoKeysError:
            return []
        records = [(await self.get(key))[0] for key in keys]
        return [record for record in records if record is not None]

    # ------------------------------------------------------------ objects

    async def fetch_upload(self, name: str, dest: Path) -> None:
        await _fetch(self.uploads, name, dest, f"upload {name}")

    async def drop_upload(self, name: str) -> None:
        with contextlib.suppress(nats.js.errors.NotFoundError, nats.js.errors.ObjectNotFoundError):
            await self.uploads.delete(name)

    async def put_zip(self, package_id: str, source: Path) -> None:
        with source.open("rb") as body:
            await self.zips.put(package_id, body)

    async def fetch_zip(self, package_id: str, dest: Path) -> None:
        await _fetch(self.zips, package_id, dest, f"zip of package {package_id}")

    async def put_log(self, package_id: str, data: bytes) -> None:
        await self.logs.put(subjects.package_log_object(package_id), data)

    async def delete(self, package_id: str) -> None:
        """Metadata first (the catalog drops the package as soon as KV does), then the zip and the log."""
        await self.kv.delete(package_id)
        for store, name in ((self.zips, package_id), (self.logs, subjects.package_log_object(package_id))):
            with contextlib.suppress(nats.js.errors.NotFoundError, nats.js.errors.ObjectNotFoundError):
                await store.delete(name)


async def _fetch(store: ObjectStore, name: str, dest: Path, what: str) -> None:
    """Copy an object to ``dest`` chunk by chunk (never whole in memory)."""
    try:
        with dest.open("wb") as out:
            await store.get(name, writeinto=out)
    except (nats.js.errors.NotFoundError, nats.js.errors.ObjectNotFoundError):
        raise error_for(Code.PACKAGE_UPLOAD_LOST, f"{what} is not in the object store") from None


def not_found(package_id: str) -> NotFoundError:
    return NotFoundError(Code.PACKAGE_NOT_FOUND, f"Package {package_id} not found.")
