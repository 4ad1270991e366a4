"""registry_sync against a real nats-server and real HTTP servers serving the real registry files."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal

import msgspec
import nats.js.errors
import pytest
from aiohttp import web
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from common import bus, subjects
from common.embedded_nats import EmbeddedNats
from common.errors import AppError, Code
from common.jetstream import kv_bucket, kv_get
from common.messages import (
    Ack,
    AddCustomService,
    AddRegistry,
    CatalogChanged,
    CatalogEntry,
    CatalogMeta,
    CatalogSnapshot,
    Empty,
    RefreshRegistries,
    RefreshResult,
    RegistryList,
    RegistryStatus,
    RemoveCustomService,
    RemoveRegistry,
)
from common.nats_auth import client_credentials
from common.settings import Settings
from registry_sync.component import RegistrySync
from tests.testbed.registries import REGISTRIES_DIR
from tests.testbed.util import wait_until

DATA = REGISTRIES_DIR
MAIN, DEV, MOCK = (
    "prem-registry-main-manifests.json",
    "prem-registry-dev-manifests.json",
    "prem-daemon-mock-manifests.json",
)
TIMEOUT = 10.0
Mode = Literal["ok", "500", "garbage"]


def data(name: str) -> bytes:
    path = DATA / name
    if not path.is_file():
        pytest.fail(f"registry file {path} is missing from the repository's test data (tests/data/registries)")
    return path.read_bytes()


def main_ids() -> list[str]:
    return [m["id"] for m in json.loads(data(MAIN))]


class RegistryServer:
    """Registry documents over HTTP with ETags; each document's failure mode can be switched."""

    def __init__(self) -> None:
        self.documents: dict[str, bytes] = {}
        self.modes: dict[str, Mode] = {}
        self.log: list[tuple[str, int]] = []
        self.base = ""
        self.hold: asyncio.Event | None = None
        """When set: the next request takes the document as it is now, then waits for this event to answer."""
        self.holding = asyncio.Event()

    def url(self, name: str) -> str:
        return f"{self.base}/{name}"

    def serve(self, name: str, body: bytes, mode: Mode = "ok") -> str:
        self.documents[name], self.modes[name] = body, mode
        return self.url(name)

    def statuses(self, name: str) -> list[int]:
        return [status for path, status in self.log if path == name]

    async def handle(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        response = self._answer(name, request.headers.get("If-None-Match"))
        if (hold := self.hold) is not None:
            self.hold = None
            self.holding.set()
            await hold.wait()
        self.log.append((name, response.status))
        return response

    def _answer(self, name: str, if_none_match: str | None) -> web.Response:
        mode = self.modes.get(name)
        if mode is None:
            return web.Response(status=404)
        if mode == "500":
            return web.Response(status=500, text="upstream broke")
        if mode == "garbage":
            return web.Response(body=b"<html>this is not json", headers={"ETag": '"garbage"'})
        body = self.documents[name]
        etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
        if if_none_match == etag:
            return web.Response(status=304, headers={"ETag": etag})
        return web.Response(body=body, content_type="application/json", headers={"ETag": etag})


@pytest.fixture
async def registry_server() -> AsyncIterator[RegistryServer]:
    server = RegistryServer()
    app = web.Application()
    app.router.add_get("/{name}", server.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    server.base = f"http://127.0.0.1:{port}"
    try:
        yield server
    finally:
        await runner.cleanup()


@asynccontextmanager
async def running(settings: Settings, url: str, cls: type[RegistrySync] = RegistrySync) -> AsyncIterator[RegistrySync]:
    nc = await bus.connect(url, "test-registry-sync", client_credentials(settings, subjects.REGISTRY_SYNC))
    comp = cls(settings, nc)
    await comp.start()
    async with asking(settings, url) as asker:
        await wait_for(lambda: answers(asker))
    try:
        yield comp
    finally:
        await comp.stop()
        if nc.is_connected:
            await nc.drain()
        with contextlib.suppress(ConnectionError):  # the server may have been killed under it
            await nc.close()


@asynccontextmanager
async def asking(settings: Settings, url: str) -> AsyncIterator[NATS]:
    """A connection as the gateway: registry_sync's own bus user may serve its commands, not send them."""
    nc = await bus.connect(url, "test-gateway", client_credentials(settings, subjects.GATEWAY))
    try:
        yield nc
    finally:
        await nc.close()


async def wait_for(check: Callable[[], Awaitable[bool]], timeout: float = TIMEOUT) -> None:
    await wait_until(check, deadline_s=timeout, interval=0.02)


async def answers(nc: NATS) -> bool:
    """The component's endpoints take requests (a rare first request right after start finds no responder)."""
    try:
        await bus.request(nc, subjects.REGISTRY_LIST, Empty(), RegistryList, TIMEOUT)
    except AppError as exc:
        if exc.code != Code.BUS_UNAVAILABLE:
            raise
        return False
    return True


async def registries(nc: NATS) -> list[RegistryStatus]:
    return (await bus.request(nc, subjects.REGISTRY_LIST, Empty(), RegistryList, TIMEOUT)).registries


async def checked(nc: NATS, since: float = 0.0) -> bool:
    """Every registry was checked (and the outcome published: the list waits for publishes in progress)."""
    return all(r.checked_at is not None and r.checked_at > since for r in await registries(nc))


async def catalog(js: JetStreamContext) -> tuple[CatalogMeta, list[CatalogEntry]]:
    kv = await kv_bucket(js, subjects.KV_CATALOG)
    meta, _ = await kv_get(kv, subjects.CATALOG_META_KEY, CatalogMeta)
    assert meta is not None
    entries = [(await kv_get(kv, subjects.catalog_key(sid), CatalogEntry))[0] for sid in meta.order]
    assert all(entry is not None for entry in entries)
    return meta, [entry for entry in entries if entry is not None]


async def last_event_seq(js: JetStreamContext) -> int:
    try:
        return (await js.get_last_msg(subjects.EVENTS_STREAM, subjects.CATALOG_CHANGED)).seq or 0
    except nats.js.errors.NotFoundError:
        return 0


def with_urls(settings: Settings, *urls: str, **changes: Any) -> Settings:
    return msgspec.structs.replace(settings, registry_urls=urls, registry_refresh_s=3600.0, **changes)


async def test_the_real_registries_load(
    settings: Settings, nc: NATS, js: JetStreamContext, registry_server: RegistryServer
) -> None:
    urls = [registry_server.serve(name, data(name)) for name in (MAIN, DEV, MOCK)]
    async with running(with_urls(settings, *urls), settings.nats_url or ""):
        await wait_for(lambda: checked(nc))
        status = {r.url: r for r in await registries(nc)}
        assert [(status[u].status, status[u].count, status[u].unsupported) for u in urls] == [
            ("ok", 32, 0),
            ("ok", 47, 12),
            ("ok", 8, 0),
        ]
        assert all(status[u].skipped == [] and status[u].etag for u in urls)
        meta, entries = await catalog(js)
        dev_ids = [m["id"] for m in json.loads(data(DEV))]
        mock_ids = [m["id"] for m in json.loads(data(MOCK))]
        expected = list(dict.fromkeys([*main_ids(), *dev_ids, *mock_ids]))
        assert meta.order == expected
        origin = {e.manifest.id: e.origin for e in entries}
        assert origin["vicuna-7b-q4"] == urls[0] and origin["chat-mock-small"] == urls[2]
        binary = [e for e in entries if e.manifest.service_type == "binary"]
        assert len(binary) == 12 and all(e.manifest.docker_images is None and e.origin == urls[1] for e in binary)


async def test_a_second_registry_merges_like_premd_with_origins(
    settings: Settings, nc: NATS, js: JetStreamContext, registry_server: RegistryServer
) -> None:
    raw = json.loads(data(MAIN))
    first = registry_server.serve(MAIN, data(MAIN))
    second_doc = [dict(raw[4], name="Shadowed copy"), dict(raw[0], id="brand-new-service", name="Brand new")]
    second = registry_server.serve("second", json.dumps(second_doc).encode())
    async with running(with_urls(settings, first), settings.nats_url or ""):
        await wait_for(lambda: checked(nc))
        before, _ = await catalog(js)
        events = await nc.subscribe(subjects.CATALOG_CHANGED)
        status = await bus.request(nc, subjects.REGISTRY_ADD, AddRegistry(url=second), RegistryStatus, TIMEOUT)
        assert (status.status, status.count) == ("ok", 2)
        event = msgspec.json.decode((await events.next_msg(timeout=TIMEOUT)).data, type=CatalogChanged)
        assert event == CatalogChanged(
            generation=before.generation + 1, added=["brand-new-service"], removed=[], changed=[]
        )
        snapshot = await bus.request(nc, subjects.REGISTRY_SNAPSHOT, Empty(), CatalogSnapshot, TIMEOUT)
        assert [e.manifest.id for e in snapshot.services] == [*main_ids(), "brand-new-service"]
        by_id = {e.manifest.id: e for e in snapshot.services}
        assert by_id[raw[4]["id"]].origin == first and by_id[raw[4]["id"]].manifest.name == raw[4]["name"]
        assert by_id["brand-new-service"].origin == second
        meta, entries = await catalog(js)
        assert meta.generation == snapshot.generation == event.generation
        assert entries == snapshot.services
        assert [r.url for r in meta.registries] == [first, second]

        # Removing the second registry drops only what came from it (premd would drop raw[4]'s id too).
        await bus.request(nc, subjects.REGISTRY_REMOVE, RemoveRegistry(url=second), Ack, TIMEOUT)
        event = msgspec.json.decode((await events.next_msg(timeout=TIMEOUT)).data, type=CatalogChanged)
        assert (event.added, event.removed, event.changed) == ([], ["brand-new-service"], [])
        meta, entries = await catalog(js)
        assert meta.order == main_ids()
        assert all(e.origin == first for e in entries)


async def test_a_failing_registry_keeps_its_last_good_content_until_it_recovers(
    settings: Settings, nc: NATS, js: JetStreamContext, registry_server: RegistryServer
) -> None:
    url = registry_server.serve(MOCK, data(MOCK))
    async with running(with_urls(settings, url), settings.nats_url or ""):
        await wait_for(lambda: checked(nc))
        good, _ = await catalog(js)
        failures: list[tuple[Mode, str]] = [("garbage", "not JSON"), ("500", "HTTP 500")]
        for mode, error in failures:
            registry_server.modes[MOCK] = mode
            result = await bus.request(nc, subjects.REGISTRY_REFRESH, RefreshRegistries(), RefreshResult, TIMEOUT)
            (status,) = result.registries
            assert status.status == "error" and status.error is not None and error in status.error
            assert status.count == 8
            meta, entries = await catalog(js)
            assert meta.order == good.order and len(entries) == 8
            assert meta.registries[0].status == "error" and meta.registries[0].error == status.error
        registry_server.modes[MOCK] = "ok"
        result = await bus.request(nc, subjects.REGISTRY_REFRESH, RefreshRegistries(url=url), RefreshResult, TIMEOUT)
        assert (result.registries[0].status, result.registries[0].error) == ("ok", None)
        assert (result.added, result.removed, result.changed) == ([], [], [])
        meta, _ = await catalog(js)
        assert meta.registries[0].status == "ok" and meta.registries[0].error is None
        # The recovery was a conditional request: the last good content's ETag still matched.
        assert registry_server.statuses(MOCK)[-1] == 304


async def test_bad_entries_are_skipped_and_reported_and_the_rest_load(
    settings: Settings, nc: NATS, js: JetStreamContext, registry_server: RegistryServer
) -> None:
    raw = json.loads(data(MOCK))
    no_images = {k: v for k, v in raw[1].items() if k != "dockerImages"}
    wrong_type = dict(raw[2], interfaces="chat")
    url = registry_server.serve("bad", json.dumps([raw[0], no_images, wrong_type, raw[3]]).encode())
    async with running(with_urls(settings, url), settings.nats_url or ""):
        await wait_for(lambda: checked(nc))
        (status,) = await registries(nc)
        assert status.status == "ok" and status.count == 2
        assert [(s.index, s.id, s.reason.split(":")[0]) for s in status.skipped] == [
            (1, raw[1]["id"], "dockerImages"),
            (2, raw[2]["id"], "interfaces"),
        ]
        meta, _ = await catalog(js)
        assert meta.order == [raw[0]["id"], raw[3]["id"]]
        assert meta.registries[0].skipped == status.skipped


async def test_unchanged_content_makes_no_revision_and_no_event(
    settings: Settings, nc: NATS, js: JetStreamContext, registry_server: RegistryServer, tmp_path: Path
) -> None:
    http = registry_server.serve(MAIN, data(MAIN))
    file = tmp_path / "mock.json"
    shutil.copyfile(DATA / MOCK, file)
    async with running(with_urls(settings, http, file.as_uri()), settings.nats_url or ""):
        await wait_for(lambda: checked(nc))
        kv = await kv_bucket(js, subjects.KV_CATALOG)
        before, revision = await kv_get(kv, subjects.CATALOG_META_KEY, CatalogMeta)
        seq = await last_event_seq(js)
        for _ in range(3):
            result = await bus.request(nc, subjects.REGISTRY_REFRESH, RefreshRegistries(), RefreshResult, TIMEOUT)
            assert result.generation == (before.generation if before else -1)
            assert all(r.status == "ok" for r in result.registries)
        assert registry_server.statuses(MAIN)[-3:] == [304, 304, 304]
        after, revision_after = await kv_get(kv, subjects.CATALOG_META_KEY, CatalogMeta)
        assert (after, revision_after) == (before, revision)
        assert await last_event_seq(js) == seq

        # Same bytes under a server that ignores validators: still no new revision.
        registry_server.documents[MAIN] = data(MAIN)
        file.write_bytes(data(MOCK))  # new mtime, same content
        await bus.request(nc, subjects.REGISTRY_REFRESH, RefreshRegistries(), RefreshResult, TIMEOUT)
        assert (await kv_get(kv, subjects.CATALOG_META_KEY, CatalogMeta))[0] == before
        assert await last_event_seq(js) == seq

        # A real change is one revision and one event.
        file.write_bytes(json.dumps(json.loads(data(MOCK))[:7]).encode())
        result = await bus.request(nc, subjects.REGISTRY_REFRESH, RefreshRegistries(), RefreshResult, TIMEOUT)
        assert result.removed == ["redis"] and result.generation == (before.generation if before else 0) + 1
        assert await last_event_seq(js) > seq


async def test_configuration_and_custom_services_survive_restarts_of_nats_and_registry_sync(
    settings: Settings, nats_server: EmbeddedNats, registry_server: RegistryServer
) -> None:
    first = registry_server.serve(MAIN, data(MAIN))
    second = registry_server.serve(MOCK, data(MOCK))
    custom = dict(json.loads(data(MOCK))[0], id="my-custom-service", name="Mine", myOwnKey=1)
    configured = with_urls(settings, first)
    async with running(configured, nats_server.url), asking(settings, nats_server.url) as nc:
        await wait_for(lambda: checked(nc))
        await bus.request(nc, subjects.REGISTRY_ADD, AddRegistry(url=second), RegistryStatus, TIMEOUT)
        entry = await bus.request(
            nc, subjects.CUSTOM_SERVICE_ADD, AddCustomService(manifest=custom), CatalogEntry, TIMEOUT
        )
        assert entry.origin == "custom" and entry.extra == {"myOwnKey": 1}
        before = await bus.request(nc, subjects.REGISTRY_SNAPSHOT, Empty(), CatalogSnapshot, TIMEOUT)
        await nats_server.kill()  # registry_sync's NATS dies hard, then registry_sync itself
    await nats_server.start()
    fetched = len(registry_server.log)
    restarted = time.time()
    async with running(configured, nats_server.url), asking(settings, nats_server.url) as nc:
        js = nc.jetstream()
        after = await bus.request(nc, subjects.REGISTRY_SNAPSHOT, Empty(), CatalogSnapshot, TIMEOUT)
        assert [r.url for r in after.registries] == [first, second]
        assert after.generation >= before.generation
        assert after.services == before.services
        assert after.services[-1].manifest.id == "my-custom-service" and after.services[-1].origin == "custom"
        meta, _ = await catalog(js)
        assert meta.generation == after.generation
        await wait_for(lambda: checked(nc, since=restarted))
        # Restarted from stored content: the first fetches were conditional and changed nothing.
        assert [status for _, status in registry_server.log[fetched:]] == [304, 304]
        assert (await catalog(js))[0].generation == after.generation
        await bus.request(nc, subjects.CUSTOM_SERVICE_REMOVE, RemoveCustomService(id="my-custom-service"), Ack, TIMEOUT)
        assert "my-custom-service" not in (await catalog(js))[0].order


async def test_the_bundled_snapshot_serves_until_the_live_registry_answers(
    settings: Settings, nc: NATS, js: JetStreamContext, registry_server: RegistryServer
) -> None:
    live = json.loads(data(MAIN))[:30]
    url = registry_server.serve("official", json.dumps(live).encode(), mode="500")

    class Offline(RegistrySync):
        bundled_url = url

    async with running(with_urls(settings, url), settings.nats_url or "", Offline):
        await wait_for(lambda: checked(nc))
        (status,) = await registries(nc)
        assert status.bundled and status.bundled_date == "2023-11-23" and status.count == 32
        assert status.status == "error" and status.error == "HTTP 500 Internal Server Error"
        assert (await catalog(js))[0].order == main_ids()
        registry_server.modes["official"] = "ok"
        result = await bus.request(nc, subjects.REGISTRY_REFRESH, RefreshRegistries(), RefreshResult, TIMEOUT)
        (status,) = result.registries
        assert (status.bundled, status.bundled_date, status.status, status.count) == (False, None, "ok", 30)
        assert result.removed == main_ids()[30:]


async def test_command_errors_carry_stable_codes(
    settings: Settings, nc: NATS, js: JetStreamContext, registry_server: RegistryServer
) -> None:
    url = registry_server.serve(MAIN, data(MAIN))
    broken = registry_server.serve("broken", b"", mode="500")
    big = registry_server.serve("big", b"[" + b" " * 300_000 + b"]")
    small = with_urls(settings, url, registry_max_bytes=200_000)
    raw = json.loads(data(MOCK))[0]

    async def code_of(subject: str, msg: msgspec.Struct) -> tuple[str, str]:
        with pytest.raises(AppError) as caught:
            await bus.request(nc, subject, msg, Ack, TIMEOUT)
        return caught.value.code, caught.value.message

    async with running(small, settings.nats_url or ""):
        await wait_for(lambda: checked(nc))
        assert (await code_of(subjects.REGISTRY_ADD, AddRegistry(url=url)))[0] == Code.REGISTRY_DUPLICATE
        assert (await code_of(subjects.REGISTRY_ADD, AddRegistry(url="ftp://x/y.json")))[0] == (
            Code.REGISTRY_UNSUPPORTED_SCHEME
        )
        code, message = await code_of(subjects.REGISTRY_ADD, AddRegistry(url=broken))
        assert code == Code.REGISTRY_FETCH_FAILED and "HTTP 500" in message
        code, message = await code_of(subjects.REGISTRY_ADD, AddRegistry(url=big))
        assert code == Code.REGISTRY_FETCH_FAILED and "exceeds the limit of 200000 bytes" in message
        code, message = await code_of(subjects.REGISTRY_ADD, AddRegistry(url="http://127.0.0.1:1/none.json"))
        assert code == Code.REGISTRY_FETCH_FAILED
        assert [r.url for r in await registries(nc)] == [url]
        assert (await code_of(subjects.REGISTRY_REMOVE, RemoveRegistry(url=broken)))[0] == Code.REGISTRY_UNKNOWN
        assert (await code_of(subjects.REGISTRY_REFRESH, RefreshRegistries(url=broken)))[0] == Code.REGISTRY_UNKNOWN

        no_port = {k: v for k, v in raw.items() if k != "defaultPort"}
        code, message = await code_of(subjects.CUSTOM_SERVICE_ADD, AddCustomService(manifest=no_port))
        assert code == Code.SERVICE_INVALID and "defaultPort: missing" in message
        wrong = dict(raw, id="x1", dockerImages={"cpu": {"image": 5}})
        code, message = await code_of(subjects.CUSTOM_SERVICE_ADD, AddCustomService(manifest=wrong))
        assert code == Code.SERVICE_INVALID and "dockerImages.cpu.image" in message
        taken = dict(raw, id="vicuna-7b-q4")
        assert (await code_of(subjects.CUSTOM_SERVICE_ADD, AddCustomService(manifest=taken)))[0] == (
            Code.SERVICE_DUPLICATE
        )
        gone = RemoveCustomService(id="vicuna-7b-q4")
        assert (await code_of(subjects.CUSTOM_SERVICE_REMOVE, gone))[0] == Code.SERVICE_NOT_FOUND
        assert (await catalog(js))[0].order == main_ids()


async def test_a_malformed_url_fails_alone_and_the_other_registries_refresh(
    settings: Settings, nc: NATS, js: JetStreamContext, registry_server: RegistryServer
) -> None:
    """A URL that cannot even be parsed (from PREM_REGISTRY_URL or the bus) is that registry's error only."""
    good = registry_server.serve(MOCK, data(MOCK))
    bad_host, nul_path = "http://[::1/manifests.json", "file:///tmp/a%00b.json"
    async with running(with_urls(settings, bad_host, good, nul_path), settings.nats_url or ""):
        await wait_for(lambda: checked(nc))
        status = {r.url: r for r in await registries(nc)}
        assert (status[good].status, status[good].count) == ("ok", 8)
        for url in (bad_host, nul_path):
            assert status[url].status == "error" and "invalid URL" in (status[url].error or "")
        assert (await catalog(js))[0].order == [m["id"] for m in json.loads(data(MOCK))]
        with pytest.raises(AppError) as caught:
            await bus.request(nc, subjects.REGISTRY_ADD, AddRegistry(url="https://[::1"), RegistryStatus, TIMEOUT)
        assert caught.value.code == Code.REGISTRY_FETCH_FAILED and "invalid URL" in caught.value.message


async def test_a_file_registry_that_is_not_a_regular_file_is_refused_at_once(
    settings: Settings, nc: NATS, tmp_path: Path
) -> None:
    """A FIFO would block the worker thread reading it forever (past the fetch deadline): it is refused."""
    fifo = tmp_path / "registry.fifo"
    os.mkfifo(fifo)
    try:
        allowed = with_urls(settings, registry_fetch_timeout_s=2.0, registry_file_dir=str(tmp_path))
        async with running(allowed, settings.nats_url or ""):
            with pytest.raises(AppError) as caught:
                await bus.request(nc, subjects.REGISTRY_ADD, AddRegistry(url=fifo.as_uri()), RegistryStatus, TIMEOUT)
            assert caught.value.code == Code.REGISTRY_FETCH_FAILED
            assert caught.value.message == f"{fifo.as_uri()}: {fifo} is not a regular file"
    finally:
        with contextlib.suppress(OSError):  # unblock a reader stuck in open() (without the fix)
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))


async def test_a_slow_stale_fetch_does_not_undo_a_newer_one(
    settings: Settings, nc: NATS, js: JetStreamContext, registry_server: RegistryServer
) -> None:
    """The periodic refresh gets the old document, slowly; a refresh on demand gets the new one first."""
    old = json.loads(data(MOCK))
    url = registry_server.serve(MOCK, json.dumps(old).encode())
    release = asyncio.Event()
    registry_server.hold = release
    round_done = asyncio.Event()

    class OneRound(RegistrySync):
        async def _refresh_forever(self) -> None:
            await self.syncer.refresh()
            round_done.set()

    try:
        async with running(with_urls(settings, url), settings.nats_url or "", OneRound):
            await asyncio.wait_for(registry_server.holding.wait(), TIMEOUT)
            registry_server.documents[MOCK] = json.dumps(old[:7]).encode()
            result = await bus.request(nc, subjects.REGISTRY_REFRESH, RefreshRegistries(), RefreshResult, TIMEOUT)
            assert result.added == [m["id"] for m in old[:7]] and result.registries[0].count == 7
            release.set()
            await asyncio.wait_for(round_done.wait(), TIMEOUT)
            (status,) = await registries(nc)
            assert status.count == 7
            assert (await catalog(js))[0].order == [m["id"] for m in old[:7]]
    finally:
        release.set()


# --- file:// registries: only under PREMD_REGISTRY_FILE_DIR, or given in PREM_REGISTRY_URL at start (issue 10) ---


async def test_file_registries_outside_the_allowed_directory_are_refused(
    settings: Settings, nc: NATS, tmp_path: Path
) -> None:
    allowed, outside = tmp_path / "registries", tmp_path / "private"
    allowed.mkdir()
    outside.mkdir()
    for where in (allowed, outside):
        (where / "r.json").write_bytes(data(MOCK))
    (allowed / "link.json").symlink_to(outside / "r.json")
    given = outside / "given.json"
    given.write_bytes(b"[]")
    configured = with_urls(settings, given.as_uri(), registry_file_dir=str(allowed))
    async with running(configured, settings.nats_url or ""):
        before = [r.url for r in await registries(nc)]
        assert before == [given.as_uri()]  # given at start: read although outside the directory
        for url in ((outside / "r.json").as_uri(), (allowed / "link.json").as_uri(), "file:///etc/passwd"):
            with pytest.raises(AppError) as caught:
                await bus.request(nc, subjects.REGISTRY_ADD, AddRegistry(url=url), RegistryStatus, TIMEOUT)
            assert caught.value.code == Code.REGISTRY_FILE_NOT_ALLOWED
            assert f"under {allowed}" in caught.value.message
        assert [r.url for r in await registries(nc)] == before  # nothing changed
        inside = (allowed / "r.json").as_uri()
        status = await bus.request(nc, subjects.REGISTRY_ADD, AddRegistry(url=inside), RegistryStatus, TIMEOUT)
        assert (status.status, status.count) == ("ok", 8)


async def test_without_an_allowed_directory_only_the_file_registries_given_at_start_are_read(
    settings: Settings, nc: NATS, tmp_path: Path
) -> None:
    (tmp_path / "r.json").write_bytes(data(MOCK))
    async with running(with_urls(settings), settings.nats_url or ""):
        with pytest.raises(AppError) as caught:
            url = (tmp_path / "r.json").as_uri()
            await bus.request(nc, subjects.REGISTRY_ADD, AddRegistry(url=url), RegistryStatus, TIMEOUT)
        assert caught.value.code == Code.REGISTRY_FILE_NOT_ALLOWED
        assert "PREMD_REGISTRY_FILE_DIR is unset" in caught.value.message
        assert await registries(nc) == []
