"""JetStream resources (streams, KV buckets, object stores), their configuration, and typed KV access.

Every component calls ensure_resources() at start, so whichever starts first creates them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Callable
from typing import Generic, TypeVar

import msgspec
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, ObjectStoreConfig, RetentionPolicy, StorageType, StreamConfig
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

from common import codec, subjects
from common.errors import Code, error_for

logger = logging.getLogger(__name__)

T = TypeVar("T", bound=msgspec.Struct)

EVENTS_MAX_AGE_S = 7 * 24 * 3600.0
EVENTS_MAX_MSGS = 1_000_000
EVENTS_MAX_BYTES = 1024 * 1024 * 1024
"""The event stream's disk bound (oldest events go first): a million large pull-progress events fit well under it."""

_KV_BUCKETS = {
    subjects.KV_CATALOG: 1,  # entries can be large; history of 10,000 services x 5 would be hundreds of MB
    subjects.KV_REGISTRY_CONFIG: 5,
    subjects.KV_DESIRED: 5,
    subjects.KV_OBSERVED: 1,
    subjects.KV_HOST: 1,
    # --- packages: pipeline ---
    subjects.KV_PACKAGES: 5,
}
# --- packages: pipeline ---
BUILD_JOBS_DUPLICATE_WINDOW_S = 600.0
"""Identical uploads within this window share one enqueued job (Nats-Msg-Id); later ones find the KV record."""


async def ensure_resources(js: JetStreamContext) -> None:
    """Create premd's streams and buckets if missing, and bring existing ones to the configuration stated here.

    Idempotent and safe from several processes. A data dir written by an older premd (other limits, another
    history depth) is updated in place on start, so a changed limit takes effect without wiping state.
    """
    events = StreamConfig(
        name=subjects.EVENTS_STREAM,
        subjects=[subjects.EVENTS_ALL],
        storage=StorageType.FILE,
        max_age=EVENTS_MAX_AGE_S,
        max_msgs=EVENTS_MAX_MSGS,
        max_bytes=EVENTS_MAX_BYTES,
    )
    await ensure_stream(js, events, ("subjects", "max_age", "max_msgs", "max_bytes"))
    for bucket, history in _KV_BUCKETS.items():
        await kv_bucket(js, bucket)
        await _ensure_history(js, bucket, history)
    await _ensure_build_jobs(js)
    for store in (
        subjects.OBJ_LOGS,
        subjects.OBJ_REGISTRY_CONTENT,
        subjects.OBJ_PACKAGES,
        subjects.OBJ_PACKAGE_UPLOADS,
    ):
        try:
            await js.object_store(store)
        except nats.js.errors.BucketNotFoundError:
            with contextlib.suppress(nats.js.errors.BadRequestError):
                await js.create_object_store(store, ObjectStoreConfig(storage=StorageType.FILE))


# --- reliability (issue 9): existing streams and buckets follow the configuration stated here ---


async def ensure_stream(js: JetStreamContext, wanted: StreamConfig, fields: tuple[str, ...]) -> None:
    """Create the stream, or update the ``fields`` of an existing one that differ from ``wanted``."""
    assert wanted.name is not None
    try:
        info = await js.stream_info(wanted.name)
    except nats.js.errors.NotFoundError:
        with contextlib.suppress(nats.js.errors.BadRequestError):  # another process won the race
            await js.add_stream(wanted)
        return
    current = info.config
    changed = {f: getattr(wanted, f) for f in fields if getattr(current, f) != getattr(wanted, f)}
    if changed:
        logger.info("stream %s: configuration updated (%s)", wanted.name, ", ".join(sorted(changed)))
        await js.update_stream(dataclasses.replace(current, **changed))


async def _ensure_history(js: JetStreamContext, bucket: str, history: int) -> None:
    """A bucket created with another history depth keeps that depth unless updated: update it."""
    await ensure_stream(js, StreamConfig(name=f"KV_{bucket}", max_msgs_per_subject=history), ("max_msgs_per_subject",))


async def _ensure_build_jobs(js: JetStreamContext) -> None:
    """packages: the work-queue stream of build jobs (each job is removed once a builder acknowledges it)."""
    jobs = StreamConfig(
        name=subjects.BUILD_JOBS_STREAM,
        subjects=[subjects.BUILD_JOBS_ALL],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        duplicate_window=BUILD_JOBS_DUPLICATE_WINDOW_S,
    )
    await ensure_stream(js, jobs, ("subjects", "duplicate_window"))


async def kv_bucket(js: JetStreamContext, bucket: str) -> KeyValue:
    """The bucket, created with its configuration (_KV_BUCKETS: the one place it is stated) if missing."""
    try:
        return await js.key_value(bucket)
    except nats.js.errors.BucketNotFoundError:
        with contextlib.suppress(nats.js.errors.BadRequestError):
            return await js.create_key_value(
                config=KeyValueConfig(bucket=bucket, history=_KV_BUCKETS.get(bucket, 1), storage=StorageType.FILE)
            )
        return await js.key_value(bucket)


async def kv_get(kv: KeyValue, key: str, type_: type[T]) -> tuple[T | None, int]:
    """The decoded value and its revision; (None, 0) when absent or deleted."""
    try:
        entry = await kv.get(key)
    except nats.js.errors.KeyNotFoundError:
        return None, 0
    if entry.value is None or entry.operation in (KV_DEL, KV_PURGE):
        return None, entry.revision or 0
    try:
        return codec.decode(entry.value, type_), entry.revision or 0
    except msgspec.DecodeError as exc:  # also ValidationError
        # One bad value (written by another version, or damaged) must not stop a component: it reads as absent,
        # with its revision, so the next compare-and-set write replaces it. Reported, never silent.
        logger.error("%s/%s: undecodable %s skipped: %s", kv._name, key, type_.__name__, exc)
        return None, entry.revision or 0


async def kv_transition(
    kv: KeyValue,
    key: str,
    type_: type[T],
    fn: Callable[[T | None], T],
    *,
    known: tuple[T | None, int] | None = None,
    same: Callable[[T, T], bool] | None = None,
    attempts: int = 10,
) -> tuple[T, int]:
    """Compare-and-set read-modify-write, the one such loop: a stale write re-reads and re-applies ``fn`` (pure).

    ``known``: a cached (value, revision) to start from instead of reading. ``same``: when it says the new value
    equals the current one, nothing is written and the current value and revision are returned.
    """
    current, revision = known if known is not None else await kv_get(kv, key, type_)
    for _ in range(attempts):
        new = fn(current)
        if current is not None and same is not None and same(current, new):
            return current, revision
        data = codec.encode(new)
        try:
            if revision == 0:
                rev = await kv.create(key, data)
            else:
                rev = await kv.update(key, data, last=revision)
            return new, rev
        except nats.js.errors.KeyWrongLastSequenceError:
            current, revision = await kv_get(kv, key, type_)
    raise error_for(Code.STATE_CONFLICT, f"{kv._name}/{key}: too many concurrent writers")


class KVMirror(Generic[T]):
    """A live, decoded copy of a KV bucket, kept current by a watcher: reads never touch the network.

    The watch is an ordered push consumer: it survives reconnects and nats-server restarts (with its
    JetStream store). nats-py recreates the consumer from the last stream sequence seen once two idle
    heartbeats (5 s each) are missed, so after a restart the mirror can lag by up to ~20 s, never lose or
    reorder an update. Listeners run in the watcher's task: one that raises is logged, not fatal.
    """

    def __init__(self, kv: KeyValue, type_: type[T], decode_key: Callable[[str], bool] | None = None) -> None:
        self._kv = kv
        self._type = type_
        self._accept = decode_key or (lambda _key: True)
        self.values: dict[str, T] = {}
        self.revision = 0
        self._changed = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None
        self._watcher: KeyValue.KeyWatcher | None = None
        self._initial = asyncio.Event()
        self.listeners: list[Callable[[str, T | None], None]] = []

    async def start(self) -> None:
        """Start watching; returns once the bucket's current values are in (raises if the watch died first)."""
        self._watcher = await self._kv.watchall()
        self._task = asyncio.create_task(self._run(self._watcher), name=f"kv-mirror {self._kv._name}")
        initial = asyncio.ensure_future(self._initial.wait())
        try:
            await asyncio.wait({self._task, initial}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            initial.cancel()
        if not self._initial.is_set():
            await self._task  # ended before the initial values: raise what ended it
            raise RuntimeError(f"{self._kv._name}: watch ended before the initial values")

    async def stop(self) -> None:
        if self._watcher is not None:
            with contextlib.suppress(Exception):
                await self._watcher.stop()  # type: ignore[no-untyped-call]
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self, watcher: KeyValue.KeyWatcher) -> None:
        async for entry in watcher:
            if entry is None:
                self._initial.set()
                continue
            # The revision follows the whole bucket, so "caught up with revision N" holds for every mirror.
            self.revision = max(self.revision, entry.revision or 0)
            if self._accept(entry.key):
                self._take(entry)
            async with self._changed:
                self._changed.notify_all()
            if entry.delta == 0:
                self._initial.set()

    def _take(self, entry: KeyValue.Entry) -> None:
        key = entry.key
        value: T | None = None
        if entry.operation in (KV_DEL, KV_PURGE) or not entry.value:
            self.values.pop(key, None)
        else:
            try:
                value = codec.decode(entry.value, self._type)
            except msgspec.DecodeError:
                logger.warning("%s: undecodable value under %r ignored", self._kv._name, key)
                return
            self.values[key] = value
        for listener in list(self.listeners):
            try:
                listener(key, value)
            except Exception:  # boundary: a listener's bug must not freeze the mirror for everyone
                logger.exception("%s: listener failed on %r", self._kv._name, key)

    async def wait_for(self, predicate: Callable[[dict[str, T]], bool], timeout: float) -> None:
        """Wait until the mirror satisfies ``predicate`` (raises TimeoutError at the deadline)."""
        async with asyncio.timeout(timeout):
            async with self._changed:
                await self._changed.wait_for(lambda: predicate(self.values))
