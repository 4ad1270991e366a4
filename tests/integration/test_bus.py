"""Commands over a real nats-server: typed replies, typed errors with stable codes, discovery of components."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest
from aiohttp.test_utils import TestClient, TestServer
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from builder.component import Builder
from common import bus, subjects
from common.component import Running, ServiceComponent
from common.embedded_nats import EmbeddedNats
from common.errors import Code, InvalidError, NotFoundError, UnavailableError
from common.jetstream import KVMirror, kv_bucket
from common.messages import Empty, RegistryList, RemoveVolume, ServiceIdentity, ServiceStats
from common.nats_auth import credentials_path, read_credentials
from common.settings import Settings
from gateway.app import create_app
from registry_sync.component import RegistrySync
from scheduler.component import Scheduler
from tests.support.bus_users import as_admin
from tests.testbed.util import wait_until


class Echo(msgspec.Struct, frozen=True):
    text: str


async def test_typed_request_reply_and_error_codes(nc: NATS) -> None:
    """A reply decodes to its Struct; a domain error arrives as the typed exception with its code."""

    async def echo(msg: Echo) -> Echo:
        if msg.text == "missing":
            raise NotFoundError(Code.SERVICE_NOT_FOUND, "Service not found.")
        if msg.text == "boom":
            raise RuntimeError("secret internals")
        return Echo(text=msg.text.upper())

    svc = await bus.serve(nc, "echo_test", "1.0.0", "test", [bus.endpoint("echo", "test.echo", Echo, echo)])
    try:
        assert await bus.request(nc, "test.echo", Echo(text="hi"), Echo, timeout=2) == Echo(text="HI")
        with pytest.raises(NotFoundError) as not_found:
            await bus.request(nc, "test.echo", Echo(text="missing"), Echo, timeout=2)
        assert not_found.value.code == "service.not_found" and not_found.value.message == "Service not found."
        with pytest.raises(InvalidError) as invalid:
            await bus.request(nc, "test.echo", RemoveVolume(name="x"), Echo, timeout=2)
        assert invalid.value.code == "bad_request" and "Echo" in invalid.value.message
        with pytest.raises(Exception) as internal:
            await bus.request(nc, "test.echo", Echo(text="boom"), Echo, timeout=2)
        assert getattr(internal.value, "code", None) == "internal"
        assert "secret" not in str(internal.value)
    finally:
        await svc.stop()


async def test_no_responder_is_a_typed_unavailable_error(nc: NATS) -> None:
    with pytest.raises(UnavailableError) as info:
        await bus.request(nc, "nobody.listens", Empty(), Empty, timeout=1)
    assert info.value.code == Code.BUS_UNAVAILABLE


@pytest.fixture
async def workers(settings: Settings, nats_url: str) -> AsyncIterator[Running]:
    running = Running(settings)
    await running.start(nats_url, [RegistrySync, Scheduler, Builder])
    try:
        yield running
    finally:
        await running.stop()


async def test_gateway_to_worker_and_back(workers: Running, settings: Settings, nc: NATS) -> None:
    """The gateway's readiness route asks every worker over NATS; each worker answers $SRV.INFO with its id."""
    for name in (subjects.REGISTRY_SYNC, subjects.SCHEDULER, subjects.BUILDER):
        info = await bus.request(nc, subjects.srv_info(name), Empty(), ServiceIdentity, timeout=2)
        assert info.name == name and info.version and info.id
    async with TestClient(TestServer(create_app(settings, nc))) as client:
        resp = await client.get("/readyz")
        body = await resp.json()
        # The gateway's own micro service is not running in this test: only the three workers answer.
        assert body["components"] == {"gateway": False, "scheduler": True, "builder": True, "registry_sync": True}
        assert resp.status == 503 and body["bus"] == "connected"
        health = await client.get("/v1/")
        assert health.status == 200 and await health.json() == {"status": True}


async def test_metrics_export_each_components_endpoint_stats(workers: Running, settings: Settings, nc: NATS) -> None:
    """Per-endpoint counters come from $SRV.STATS (no info command of premd's own): a command shows up in /metrics."""
    await bus.request(nc, subjects.REGISTRY_LIST, Empty(), RegistryList, timeout=5)
    [stats] = await bus.gather(nc, f"{subjects.SRV_STATS}.{subjects.REGISTRY_SYNC}", ServiceStats, 2, lambda a: True)
    listed = {endpoint.subject: endpoint.num_requests for endpoint in stats.endpoints or []}
    assert listed[subjects.REGISTRY_LIST] >= 1
    async with TestClient(TestServer(create_app(settings, nc))) as client:
        text = await (await client.get("/metrics")).text()
    samples = [line for line in text.splitlines() if line.startswith("premd_bus_requests_total{")]
    mine = [s for s in samples if 'component="registry_sync"' in s and f'instance="{stats.id}"' in s]
    assert mine and any(float(s.rsplit(" ", 1)[1]) >= 1 for s in mine)
    assert 'component="scheduler"' in {s.split(",")[0].split("{")[1] for s in samples}
    infos = [line for line in text.splitlines() if line.startswith("premd_component_info{")]
    assert {"registry_sync", "scheduler", "builder"} <= {line.split('"')[1] for line in infos}


async def test_srv_ping_discovers_workers(workers: Running, nc: NATS) -> None:
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    await nc.publish(subjects.SRV_PING, b"", reply=inbox)
    names: set[str] = set()
    async with asyncio.timeout(5):
        while len(names) < 3:
            msg = await sub.next_msg(timeout=5)
            names.add(json.loads(msg.data)["name"])
    assert names == {"registry_sync", "scheduler", "builder"}


class Slow(ServiceComponent):
    """A component whose one command waits for the test to let it answer."""

    name = "slow_test"
    description = "test"
    entered: asyncio.Event
    release: asyncio.Event

    def endpoints(self) -> list[bus.Endpoint]:
        return [bus.endpoint("wait", "test.slow.wait", Echo, self._wait)]

    async def _wait(self, msg: Echo) -> Echo:
        self.entered.set()
        await self.release.wait()
        return Echo(text=msg.text)


async def test_stopping_a_component_lets_the_request_being_answered_finish(settings: Settings, nc: NATS) -> None:
    """Stop = no new requests, the one in progress still gets its reply (it used to be cancelled, unanswered)."""
    running = Running(msgspec.structs.replace(settings, shutdown_timeout_s=60))  # a busy machine is slow to stop
    await running.start(settings.nats_url or "", [Slow], as_admin(settings, Slow.name))
    comp = running.get(Slow)
    assert isinstance(comp, Slow)
    comp.entered, comp.release = asyncio.Event(), asyncio.Event()
    reply = asyncio.create_task(bus.request(nc, "test.slow.wait", Echo(text="done"), Echo, timeout=30))
    await asyncio.wait_for(comp.entered.wait(), 10)
    stopping = asyncio.create_task(running.stop())
    await _no_responders(nc, subjects.srv_info(Slow.name), timeout=15)  # intake stopped
    comp.release.set()
    assert await reply == Echo(text="done")
    await asyncio.wait_for(stopping, 30)


async def _no_responders(nc: NATS, subject: str, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while True:
            try:
                await bus.request(nc, subject, Empty(), ServiceIdentity, timeout=0.2)
            except UnavailableError as exc:
                if exc.code == Code.BUS_UNAVAILABLE:
                    return


async def test_a_request_that_outlives_the_shutdown_bound_is_cancelled(settings: Settings, nc: NATS) -> None:
    running = Running(msgspec.structs.replace(settings, shutdown_timeout_s=0.5))
    await running.start(settings.nats_url or "", [Slow], as_admin(settings, Slow.name))
    comp = running.get(Slow)
    assert isinstance(comp, Slow)
    comp.entered, comp.release = asyncio.Event(), asyncio.Event()
    reply = asyncio.create_task(bus.request(nc, "test.slow.wait", Echo(text="never"), Echo, timeout=10))
    await asyncio.wait_for(comp.entered.wait(), 10)
    await asyncio.wait_for(running.stop(), 20)  # bounds a hang only: the stop's own bound is 0.5 s
    with pytest.raises(UnavailableError) as caught:  # told, not left to its 10 s timeout (the message says which)
        await asyncio.wait_for(reply, 20)
    assert caught.value.code == Code.BUS_UNAVAILABLE and "stopped before answering" in caught.value.message


class Facts(msgspec.Struct, frozen=True):
    n: int


async def test_a_failing_listener_does_not_freeze_a_kv_mirror(js: JetStreamContext) -> None:
    kv = await kv_bucket(js, "mirror_test")
    await kv.put("a", msgspec.json.encode(Facts(n=1)))
    mirror = KVMirror(kv, Facts)
    await mirror.start()
    try:
        assert mirror.values == {"a": Facts(n=1)}

        def broken(_key: str, _value: Facts | None) -> None:
            raise RuntimeError("listener bug")

        mirror.listeners.append(broken)
        await kv.put("b", msgspec.json.encode(Facts(n=2)))
        await kv.put("c", b"not json")
        await kv.put("d", msgspec.json.encode(Facts(n=4)))
        await mirror.wait_for(lambda values: "d" in values, timeout=5)
        assert mirror.values == {"a": Facts(n=1), "b": Facts(n=2), "d": Facts(n=4)}
    finally:
        await mirror.stop()


async def test_closing_a_connection_is_not_reported_as_a_lost_server(
    nats_server: EmbeddedNats, bus_credentials: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A stop closes every connection: that must not log the warning a dying nats-server gets."""
    admin = read_credentials(credentials_path(bus_credentials, subjects.ADMIN))
    caplog.set_level(logging.DEBUG, logger="common.bus")
    closed = await bus.connect(nats_server.url, "closes", admin)
    await closed.close()
    assert [r.levelname for r in caplog.records if "nats (closes)" in r.getMessage()] == ["DEBUG"]
    lost = await bus.connect(nats_server.url, "loses", admin)
    try:
        await nats_server.kill()  # the server dies under an open connection: that is worth a warning
        await wait_until(
            lambda: _logged(caplog, "nats (loses): disconnected", "WARNING"), deadline_s=10, what="the warning"
        )
    finally:
        await lost.close()


async def _logged(caplog: pytest.LogCaptureFixture, text: str, level: str) -> bool:
    return any(r.levelname == level and text in r.getMessage() for r in caplog.records)
