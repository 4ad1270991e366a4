"""SIGKILL of registry_sync mid-refresh and of the gateway while it streams events and proxies, then restart
(issue 9 fault suite): every operation ends definite, nothing is stuck, the KV state is intact, and clients get a
clean end (an error they can tell from success), never a hang."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
from aiohttp import web
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.kv import KV_DEL, KV_PURGE

from common import bus, subjects
from common.errors import UnavailableError
from common.jetstream import kv_bucket
from common.messages import CatalogMeta, Empty, OperationEvent, RefreshRegistries, RefreshResult, RegistryList
from common.settings import Settings
from registry_sync.publish import CatalogPublisher
from tests.integration.edge_support import new_sid, put_service, ref_service
from tests.support.component_process import ComponentProcess
from tests.testbed.registries import REGISTRIES_DIR
from tests.testbed.sse import SseEvent, iter_sse
from tests.testbed.util import free_port, wait_until

DEADLINE_S = 30.0
END_S = 10.0
"""How long a client may wait for its stream to end once the component serving it is dead."""


# ---------------------------------------------------------------- registry_sync killed mid-refresh

MOCK: list[dict[str, Any]] = json.loads((REGISTRIES_DIR / "prem-daemon-mock-manifests.json").read_bytes())
BIG = 3000
"""Services in the second registry document: enough that publishing it takes a while (thousands of KV writes)."""


def big_document() -> bytes:
    """The mock registry without its first service, plus BIG more: a refresh adds, changes and removes."""
    extra = []
    for i in range(BIG):
        entry = copy.deepcopy(MOCK[1])
        entry["id"], entry["name"] = f"kill-{i:05d}", f"Kill {i}"
        extra.append(entry)
    return json.dumps([*MOCK[1:], *extra]).encode()


@dataclass
class Registry:
    """One registry document whose behaviour the test switches: ``ok`` serves ``body``; ``drip`` sends half of
    it, says so, then never sends the rest."""

    body: bytes
    mode: str = "ok"
    base: str = ""
    dripping: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if self.mode == "ok":
            return web.Response(body=self.body, content_type="application/json")
        resp = web.StreamResponse(headers={"Content-Type": "application/json", "Content-Length": str(len(self.body))})
        await resp.prepare(request)
        await resp.write(self.body[: len(self.body) // 2])
        self.dripping.set()
        await self.release.wait()  # the client is killed meanwhile: this response never ends
        return resp


@asynccontextmanager
async def registry_server(body: bytes) -> AsyncIterator[Registry]:
    registry = Registry(body)
    app = web.Application()
    app.router.add_get("/registry.json", registry.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    registry.base = f"http://127.0.0.1:{runner.addresses[0][1]}/registry.json"
    try:
        yield registry
    finally:
        registry.release.set()
        await runner.cleanup()


async def catalog_keys(js: JetStreamContext) -> tuple[CatalogMeta | None, set[str]]:
    """The catalog meta and every service id with an entry in KV_CATALOG (each entry decodable), read in one
    pass over the bucket as registry_sync reads it at start."""
    stored = await CatalogPublisher.open(js)
    for value in stored.entries.values():
        json.loads(value)  # a torn write would not decode
    return stored.meta, set(stored.entries)


def consistent(meta: CatalogMeta | None, ids: set[str]) -> bool:
    """What readers rely on: every service the meta lists has its entry."""
    return meta is not None and set(meta.order) <= ids


async def test_registry_sync_killed_mid_fetch_and_mid_publish_keeps_the_catalog_and_converges(
    settings: Settings, nc: NATS, js: JetStreamContext, tmp_path: Path
) -> None:
    first_ids = [m["id"] for m in MOCK]
    async with registry_server(json.dumps(MOCK).encode()) as registry:
        sync = ComponentProcess(
            "registry_sync",
            tmp_path / "registry_sync.log",
            PREMD_NATS_URL=settings.nats_url or "",
            PREMD_NATS_CREDENTIALS=settings.nats_credentials or "",
            PREMD_DATA_DIR=str(tmp_path / "data"),
            PREM_REGISTRY_URL=registry.base,
            PREMD_REGISTRY_REFRESH_S="3600",  # refreshes happen when the test says
        )

        async def listed() -> bool:
            meta, _ = await catalog_keys(js)
            return meta is not None and meta.order == first_ids

        try:
            await sync.start(listed)
            before, ids_before = await catalog_keys(js)
            assert before is not None and consistent(before, ids_before)

            # 1. Mid-fetch: a refresh command in flight while the registry has sent half its document.
            registry.body, registry.mode = big_document(), "drip"
            asked = asyncio.create_task(
                bus.request(nc, subjects.REGISTRY_REFRESH, RefreshRegistries(), RefreshResult, 5.0)
            )
            async with asyncio.timeout(DEADLINE_S):
                await registry.dripping.wait()
            await sync.kill()
            started = time.monotonic()
            try:
                async with asyncio.timeout(END_S):
                    await asyncio.gather(asked)
            except UnavailableError as exc:  # the caller's answer: a definite 503 (bus.timeout), not a hang
                assert exc.code == "bus.timeout", exc
            else:
                raise AssertionError("a refresh answered by a killed registry_sync")
            assert time.monotonic() - started < END_S
            meta, ids = await catalog_keys(js)
            assert meta == before and ids == ids_before  # nothing of the half-read document was published

            # 2. Mid-publish: the restarted registry_sync fetches the big document at start; killed as soon as
            # its first new entry is in KV (thousands more to write, then the meta, then the deletions).
            registry.mode = "ok"
            kv = await kv_bucket(js, subjects.KV_CATALOG)
            watcher = await kv.watch(subjects.catalog_key("*"), include_history=False)
            try:
                started_publish = asyncio.Event()

                async def first_new_entry() -> bool:
                    with contextlib.suppress(TimeoutError):
                        update = await watcher.updates(timeout=0.05)  # type: ignore[no-untyped-call]
                        new = update is not None and update.key == subjects.catalog_key("kill-00000")
                        if new and update.operation not in (KV_DEL, KV_PURGE):
                            started_publish.set()
                    return started_publish.is_set()

                await sync.start(first_new_entry)
                await sync.kill()
            finally:
                await watcher.stop()  # type: ignore[no-untyped-call]
            meta, ids = await catalog_keys(js)
            assert consistent(meta, ids), (meta, len(ids))  # either the old catalog or the new one, whole

            # 3. Restarted once more: it converges on the document, removes what left it, keeps its config.
            second_ids = [m["id"] for m in json.loads(registry.body)]

            async def converged() -> bool:
                meta, ids = await catalog_keys(js)
                return meta is not None and meta.order == second_ids and ids == set(second_ids)

            await sync.start(converged, deadline_s=60)
            meta, _ = await catalog_keys(js)
            assert meta is not None and meta.generation > before.generation
            listing = await bus.request(nc, subjects.REGISTRY_LIST, Empty(), RegistryList, 10)
            assert [(r.url, r.error) for r in listing.registries] == [(registry.base, None)], listing
            again = await bus.request(nc, subjects.REGISTRY_REFRESH, RefreshRegistries(), RefreshResult, 30)
            assert again.added == [] and again.removed == [] and again.changed == []  # nothing left to redo
        finally:
            await sync.kill()


# ---------------------------------------------------------------- gateway killed while streaming and proxying

SSE_CLIENTS = 20
TOKENS = 400
"""The proxied chat stream: 400 tokens, 50 ms apart (20 s), so it is mid-stream when the gateway dies."""


def gateway_process(settings: Settings, tmp_path: Path, port: int) -> ComponentProcess:
    return ComponentProcess(
        "gateway",
        tmp_path / "gateway.log",
        PREMD_NATS_URL=settings.nats_url or "",
        PREMD_NATS_CREDENTIALS=settings.nats_credentials or "",
        PREMD_DATA_DIR=str(tmp_path / "data"),
        PREMD_PORT=str(port),
    )


async def publish_events(js: JetStreamContext, sid: str, operation: str, count: int) -> list[int]:
    """``count`` progress events of one operation, as the scheduler publishes them; their stream sequences."""
    seqs = []
    for i in range(count):
        event = OperationEvent(
            operation_id=operation, service_id=sid, kind="pull", type="progress", at=time.time(), percentage=i
        )
        ack = await js.publish(subjects.service_event(sid, operation, "progress"), msgspec.json.encode(event))
        seqs.append(ack.seq)
    return seqs


class Follower:
    """One SSE client of ``/v1/events?service=<sid>``: what it read, and how its stream ended."""

    def __init__(self, http: aiohttp.ClientSession, url: str, last_id: str | None = None) -> None:
        self.seen: list[SseEvent] = []
        self.ended: BaseException | None = None
        self.got = asyncio.Event()
        headers = {"Last-Event-ID": last_id} if last_id is not None else {}
        self.task = asyncio.create_task(self._follow(http, url, headers))

    async def _follow(self, http: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> None:
        try:
            async with http.get(url, headers=headers) as resp:
                assert resp.status == 200, await resp.text()
                async for event in iter_sse(resp):
                    self.seen.append(event)
                    self.got.set()
        except aiohttp.ClientError as exc:  # the gateway died: a truncated chunked stream, or a reset
            self.ended = exc

    def ids(self) -> list[int]:
        return [int(e.id) for e in self.seen]


async def test_gateway_killed_while_streaming_events_and_proxying_ends_every_client_and_resumes(
    settings: Settings, nc: NATS, js: JetStreamContext, tmp_path: Path
) -> None:
    sid, port = new_sid(), free_port()
    base = f"http://127.0.0.1:{port}"
    gateway = gateway_process(settings, tmp_path, port)

    async with (
        ref_service({"REF_TOKENS": str(TOKENS), "REF_TOKEN_DELAY_S": "0.05"}) as ref_port,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=5)) as http,
    ):
        await put_service(js, sid, host_port=ref_port)
        observed_kv = await kv_bucket(js, subjects.KV_OBSERVED)
        state_before = (await observed_kv.get(sid)).value

        async def proxying() -> bool:
            async with http.get(f"{base}/proxy/{sid}/v1/", timeout=aiohttp.ClientTimeout(total=2)) as resp:
                return resp.status == 200

        async def consumers(count: int) -> bool:
            return (await js.stream_info(subjects.EVENTS_STREAM)).state.consumer_count == count

        url = f"{base}/v1/events?service={sid}"
        followers: list[Follower] = []
        try:
            await gateway.start(proxying)
            followers = [Follower(http, url) for _ in range(SSE_CLIENTS)]
            await wait_until(lambda: consumers(SSE_CLIENTS), deadline_s=DEADLINE_S, what="every SSE client following")
            before = await publish_events(js, sid, "op-before", 5)

            async def all_got_them() -> bool:
                return all(f.ids() == before for f in followers)

            await wait_until(all_got_them, deadline_s=DEADLINE_S, what="events before the kill")
            chat = {"messages": [{"role": "user", "content": "hi"}], "stream": True}
            proxied = await http.post(f"{base}/proxy/{sid}/v1/chat/completions", json=chat)
            assert proxied.status == 200
            assert (await proxied.content.readline()).startswith((b"event:", b"data:"))  # mid-stream

            await gateway.kill()
            # Every client's stream ends at once, as an error (not a clean, complete response), never a hang.
            async with asyncio.timeout(END_S):
                await asyncio.gather(*(f.task for f in followers))
                with contextlib.suppress(aiohttp.ClientError):
                    rest = await proxied.content.read()
                    raise AssertionError(f"the proxied stream ended cleanly after {len(rest)} bytes")
            proxied.release()
            assert all(isinstance(f.ended, aiohttp.ClientError) for f in followers), [f.ended for f in followers]
            # Nothing of the dead gateway is left on the bus: its consumers are reaped by the server.
            await wait_until(lambda: consumers(0), deadline_s=DEADLINE_S, what="the dead gateway's consumers reaped")
            during = await publish_events(js, sid, "op-during", 3)

            await gateway.start(proxying)
            # Each client resumes after the last event it saw: exactly the events it missed, in order, no repeat.
            resumed = [Follower(http, url, last_id=f.seen[-1].id) for f in followers]
            followers = resumed

            async def caught_up() -> bool:
                return all(f.ids() == during for f in resumed)

            await wait_until(caught_up, deadline_s=DEADLINE_S, what="events missed while the gateway was down")
            async with http.post(f"{base}/proxy/{sid}/v1/chat/completions", json={**chat, "stream": False}) as resp:
                assert resp.status == 200 and (await resp.json())["choices"], await resp.text()
            assert (await observed_kv.get(sid)).value == state_before  # the gateway's death changed no state
        finally:
            await gateway.kill()
            for f in followers:
                f.task.cancel()
            await asyncio.gather(*(f.task for f in followers), return_exceptions=True)
