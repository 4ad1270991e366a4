"""registry_sync's persistent state: configured registries, custom services, each registry's last good content.

Layout:
- KV_REGISTRY_CONFIG ``registries``: RegistryConfig (compare-and-set).
- KV_REGISTRY_CONFIG ``custom``: CustomServices (compare-and-set).
- KV_REGISTRY_CONFIG ``content.<hash of url>``: ContentInfo (validators and digest of the last good document).
- OBJ_REGISTRY_CONTENT ``<hash of url>``: the last good document itself (it may exceed a KV value's size).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
from collections.abc import Callable, Sequence
from typing import Any

import msgspec
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from common import codec, subjects
from common.errors import Code, error_for
from common.jetstream import kv_bucket, kv_get, kv_transition

logger = logging.getLogger(__name__)

REGISTRIES_KEY = "registries"
CUSTOM_KEY = "custom"


class RegistryConfig(msgspec.Struct, frozen=True, kw_only=True):
    urls: list[str]
    """Configured registries, in merge order."""
    seeded: list[str] = msgspec.field(default_factory=list)
    """Every URL PREM_REGISTRY_URL ever brought in: each is added once, so a removal through the API sticks."""


class CustomService(msgspec.Struct, frozen=True, kw_only=True):
    manifest: dict[str, Any]
    """As posted (validated again on load, so a newer manifest model applies to old entries)."""
    added_at: float


class CustomServices(msgspec.Struct, frozen=True, kw_only=True):
    services: list[CustomService] = msgspec.field(default_factory=list)


class ContentInfo(msgspec.Struct, frozen=True, kw_only=True):
    url: str
    sha256: str
    size: int
    fetched_at: float
    etag: str | None = None
    last_modified: str | None = None


def seed(current: RegistryConfig | None, env_urls: Sequence[str]) -> RegistryConfig:
    """First start: the environment's list. Later: the stored list, plus env URLs never seen before."""
    env = list(dict.fromkeys(env_urls))
    if current is None:
        return RegistryConfig(urls=env, seeded=env)
    new = [url for url in env if url not in current.seeded and url not in current.urls]
    seeded = list(dict.fromkeys([*current.seeded, *env]))
    return RegistryConfig(urls=[*current.urls, *new], seeded=seeded)


def content_name(url: str) -> str:
    """Key-safe name for a URL (KV keys and object names cannot hold every URL character)."""
    return hashlib.sha256(url.encode()).hexdigest()[:40]


class ConfigStore:
    """Typed access to registry_sync's KV bucket and object store."""

    def __init__(self, kv: KeyValue, objects: ObjectStore) -> None:
        self.kv = kv
        self.objects = objects

    @classmethod
    async def open(cls, js: JetStreamContext) -> ConfigStore:
        kv = await kv_bucket(js, subjects.KV_REGISTRY_CONFIG)
        return cls(kv, await js.object_store(subjects.OBJ_REGISTRY_CONTENT))

    # ---------------------------------------------------------------- registries

    async def seed_registries(self, env_urls: Sequence[str]) -> list[str]:
        current, _ = await kv_get(self.kv, REGISTRIES_KEY, RegistryConfig)
        wanted = seed(current, env_urls)
        if wanted != current:
            wanted, _ = await kv_transition(self.kv, REGISTRIES_KEY, RegistryConfig, lambda c: seed(c, env_urls))
        return wanted.urls

    async def add_registry(self, url: str) -> list[str]:
        def add(current: RegistryConfig | None) -> RegistryConfig:
            config = current or RegistryConfig(urls=[])
            if url in config.urls:
                raise error_for(Code.REGISTRY_DUPLICATE, f"registry {url} is already configured")
            return msgspec.structs.replace(config, urls=[*config.urls, url])

        config, _ = await kv_transition(self.kv, REGISTRIES_KEY, RegistryConfig, add)
        return config.urls

    async def remove_registry(self, url: str) -> list[str]:
        def remove(current: RegistryConfig | None) -> RegistryConfig:
            config = current or RegistryConfig(urls=[])
            if url not in config.urls:
                raise error_for(Code.REGISTRY_UNKNOWN, f"registry {url} is not configured")
            return msgspec.structs.replace(config, urls=[u for u in config.urls if u != url])

        config, _ = await kv_transition(self.kv, REGISTRIES_KEY, RegistryConfig, remove)
        return config.urls

    # ---------------------------------------------------------------- custom services

    async def custom_services(self) -> list[CustomService]:
        current, _ = await kv_get(self.kv, CUSTOM_KEY, CustomServices)
        return current.services if current is not None else []

    async def update_custom(self, fn: Callable[[list[CustomService]], list[CustomService]]) -> list[CustomService]:
        """Compare-and-set the custom services; ``fn`` is pure and may raise an AppError to refuse."""

        def apply(current: CustomServices | None) -> CustomServices:
            return CustomServices(services=fn(current.services if current is not None else []))

        result, _ = await kv_transition(self.kv, CUSTOM_KEY, CustomServices, apply)
        return result.services

    # ---------------------------------------------------------------- last good content

    async def load_content(self, url: str) -> tuple[ContentInfo, bytes] | None:
        """The last good document and its record (the caller checks the body against ``sha256``, off the loop)."""
        name = content_name(url)
        info, _ = await kv_get(self.kv, f"content.{name}", ContentInfo)
        if info is None or info.url != url:
            return None
        buffer = io.BytesIO()
        try:
            await self.objects.get(name, writeinto=buffer)
        except (nats.js.errors.NotFoundError, nats.js.errors.DigestMismatchError):
            logger.warning("last good content of %s is missing from the object store", url)
            return None
        return info, buffer.getvalue()

    async def save_content(self, info: ContentInfo, body: bytes | None) -> None:
        """Record a registry's validators; with ``body``, its new last good document too (object first)."""
        name = content_name(info.url)
        if body is not None:
            await self.objects.put(name, body)
        await self.kv.put(f"content.{name}", codec.encode(info))

    async def drop_content(self, url: str) -> None:
        name = content_name(url)
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await self.objects.delete(name)
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await self.kv.delete(f"content.{name}")
