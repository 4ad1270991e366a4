"""The scheduler's KV state: desired and observed service state, cached in memory, written with CAS.

The scheduler is the only writer of both buckets; the cache makes reads free and lets a write be
skipped when nothing but the timestamp would change. A stale revision (another writer, or a restarted
scheduler racing its predecessor's last write) re-reads and re-applies the transition.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from typing import Generic, TypeVar

import msgspec
import nats.js.errors
from nats.js.kv import KeyValue

from common import subjects
from common.errors import Code, error_for
from common.jetstream import kv_get, kv_transition
from common.messages import DesiredState, ServiceState

T = TypeVar("T", bound=msgspec.Struct)

ATTEMPTS = 10

NOT_RUNNING: Mapping[str, object] = MappingProxyType({"running": False, "ready": False, "host_port": None})
"""ServiceState fields of a service with no live container."""
NO_ERROR: Mapping[str, object] = MappingProxyType(
    {"last_error": None, "error_code": None, "exit_code": None, "log_tail": None}
)
"""ServiceState fields cleared when a service starts or stops (the last failure no longer applies)."""


def _same(a: msgspec.Struct, b: msgspec.Struct) -> bool:
    """Equal but for ``updated_at`` (a timestamp alone is not a change worth a write)."""
    if type(a) is not type(b):
        return False
    fields = [f for f in a.__struct_fields__ if f != "updated_at"]
    return all(getattr(a, f) == getattr(b, f) for f in fields)


class CachedKV(Generic[T]):
    """One bucket's values in memory plus revisions; ``update`` is a compare-and-set transition."""

    def __init__(self, kv: KeyValue, type_: type[T]) -> None:
        self._kv = kv
        self._type = type_
        self._values: dict[str, tuple[T | None, int]] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def load(self) -> None:
        try:
            keys = await self._kv.keys()
        except nats.js.errors.NoKeysError:
            return
        for key in keys:
            if not key.startswith("_"):  # reserved keys (never a service id) hold other things
                self._values[key] = await kv_get(self._kv, key, self._type)

    def get(self, key: str) -> T | None:
        return self._values.get(key, (None, 0))[0]

    def items(self) -> list[tuple[str, T]]:
        return [(k, v) for k, (v, _) in self._values.items() if v is not None]

    async def update(self, key: str, fn: Callable[[T | None], T]) -> T:
        """Apply ``fn`` to the current value and store the result unless only its timestamp changed."""
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            known = self._values.get(key, (None, 0))
            new, revision = await kv_transition(
                self._kv, key, self._type, fn, known=known, same=_same, attempts=ATTEMPTS
            )
            self._values[key] = (new, revision)
            return new

    async def delete(self, key: str) -> None:
        with contextlib.suppress(nats.js.errors.KeyNotFoundError):
            await self._kv.delete(key)
        self._values.pop(key, None)


class ObservedStore(CachedKV[ServiceState]):
    """KV_OBSERVED: what the scheduler sees per service, for the gateway."""

    def __init__(self, kv: KeyValue) -> None:
        super().__init__(kv, ServiceState)

    def state(self, service_id: str) -> ServiceState:
        return self.get(service_id) or ServiceState(service_id=service_id)

    async def change(self, service_id: str, **changes: object) -> ServiceState:
        """Set fields (and the timestamp, when anything else changed)."""

        def apply(current: ServiceState | None) -> ServiceState:
            base = current or ServiceState(service_id=service_id)
            return msgspec.structs.replace(base, updated_at=time.time(), **changes)

        return await self.update(service_id, apply)


class DesiredStore(CachedKV[DesiredState]):
    """KV_DESIRED: what the user asked for per service (survives a scheduler crash)."""

    def __init__(self, kv: KeyValue) -> None:
        super().__init__(kv, DesiredState)

    def wants_running(self, service_id: str) -> bool:
        desired = self.get(service_id)
        return desired is not None and desired.running

    async def set(
        self, service_id: str, running: bool, operation_id: str, *, force: bool = False, on_demand: bool = False
    ) -> DesiredState:
        """Record intent; a start bumps the generation (labelled on the container it makes)."""

        def apply(current: DesiredState | None) -> DesiredState:
            generation = (current.generation if current else 0) + (1 if running else 0)
            return DesiredState(
                service_id=service_id,
                running=running,
                generation=generation,
                operation_id=operation_id,
                force=force,
                updated_at=time.time(),
                on_demand=on_demand and running,
            )

        return await self.update(service_id, apply)

    # -- idle stop (issue 15)

    def on_demand(self, service_id: str) -> bool:
        """It should run, and only because a request started it."""
        desired = self.get(service_id)
        return desired is not None and desired.running and desired.on_demand

    async def claim(self, service_id: str) -> None:
        """A user asked for a service that runs on demand: it is the user's now (same container, same generation)."""

        def apply(current: DesiredState | None) -> DesiredState:
            assert current is not None  # only called when on_demand() was true
            return msgspec.structs.replace(current, on_demand=False, updated_at=time.time())

        if self.on_demand(service_id):
            await self.update(service_id, apply)


async def instance_id(kv: KeyValue) -> str:
    """This premd's id, made once and kept in KV (so it survives restarts; a new data dir is a new premd)."""
    for _ in range(ATTEMPTS):
        try:
            entry = await kv.get(subjects.INSTANCE_KEY)
            if entry.value:
                return entry.value.decode()
        except nats.js.errors.KeyNotFoundError:
            pass
        with contextlib.suppress(nats.js.errors.KeyWrongLastSequenceError):
            made = uuid.uuid4().hex[:16]
            await kv.create(subjects.INSTANCE_KEY, made.encode())
            return made
    raise error_for(Code.STATE_CONFLICT, "could not read or create the instance id")


# ---------------------------------------------------------------- image references (pure)


def split_ref(ref: str) -> tuple[str, str]:
    """``host:port/name:tag`` -> (``host:port/name``, ``tag``): the tag is after the last ``/`` (premd's bug)."""
    ref = ref.split("@", 1)[0]
    head, _, last = ref.rpartition("/")
    if ":" in last:
        name, tag = last.rsplit(":", 1)
        return (f"{head}/{name}" if head else name), tag
    return ref, "latest"


def normalize_ref(ref: str) -> str:
    """How Docker lists a reference: explicit tag, no ``docker.io/`` or ``library/`` prefix."""
    repo, tag = split_ref(ref)
    for prefix in ("docker.io/", "index.docker.io/"):
        if repo.startswith(prefix):
            repo = repo[len(prefix) :]
    if repo.startswith("library/") and repo.count("/") == 1:
        repo = repo[len("library/") :]
    return f"{repo}:{tag}"


class TagIndex:
    """The local tags by repository, normalized once: a reconcile pass asks it about every catalog service.

    Asking ``image_status`` per service would normalize every local tag once per service (O(services x
    tags) per pass, on the loop the proxy shares in ``premd serve``); built once, a lookup is one dict get.
    """

    def __init__(self, local_tags: Iterable[str]) -> None:
        self._by_repo: dict[str, set[str]] = {}
        for tag in local_tags:
            normal = normalize_ref(tag)
            self._by_repo.setdefault(split_ref(normal)[0], set()).add(normal)
        self._newest: dict[str, str] = {}

    def status(self, ref: str) -> tuple[bool, str | None, bool]:
        """(downloaded, local tag to run, needs update) for a service image, like premd but by repository.

        Every tag of every local image counts (premd looked only at the first one).
        """
        wanted = normalize_ref(ref)
        repo = split_ref(wanted)[0]
        same_repo = self._by_repo.get(repo)
        if not same_repo:
            return False, None, False
        if wanted in same_repo:
            return True, wanted, False
        newest = self._newest.get(repo)
        if newest is None:
            newest = self._newest[repo] = max(same_repo)
        return True, newest, True


def image_status(ref: str, local_tags: Iterable[str]) -> tuple[bool, str | None, bool]:
    """One service's ``TagIndex.status`` (index the tags once when asking about several)."""
    return TagIndex(local_tags).status(ref)
