"""premd as the local OpenAI endpoint, driven by the official ``openai`` SDK (issue 15).

Real parts only: a nats-server, the scheduler on the real Docker engine running the reference service
image (one container per service, each answering only its own interface, so routing by ``model`` is
checked), the full gateway on a loopback port, and ``openai.AsyncOpenAI`` as the client.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import aiodocker
import msgspec
import openai
import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from common import bus, subjects
from common.errors import ConflictError
from common.messages import OperationAccepted, ServiceStopped, StartService, StopService
from common.settings import Settings
from gateway.keys import VIEW
from tests.integration.edge_support import Client, gateway
from tests.support.scheduler_bed import (
    Events,
    put_catalog,
    ref_manifest,
    running_scheduler,
    service_id_maker,
    wait_observed,
)
from tests.testbed.util import free_port, wait_until

pytestmark = pytest.mark.docker

DEADLINE_S = 60.0
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
async def service_ids(docker: aiodocker.Docker) -> AsyncIterator[Callable[[], str]]:
    """New unique service ids; their containers and volumes are removed after the test."""
    async with service_id_maker(docker, "oai") as make:
        yield make


def sdk(client: Client, **kwargs: object) -> openai.AsyncOpenAI:
    """The SDK pointed at premd as a user would: base URL ``http://host:port/v1``, any key."""
    options: dict[str, object] = {"max_retries": 0, "timeout": DEADLINE_S, **kwargs}
    return openai.AsyncOpenAI(base_url=str(client.make_url("/v1")), api_key="not-needed", **options)  # type: ignore[arg-type]


async def add_ref_service(js: JetStreamContext, sid: str, image: str, interface: str, *env: str) -> None:
    """A catalog entry for the reference image answering only ``interface``."""
    manifest = ref_manifest(
        sid,
        image,
        interfaces=[interface],
        envVariables=[f"REF_INTERFACE={interface}", f"REF_MODEL={sid}", "REF_TOKEN_DELAY_S=0", *env],
        defaultExternalPort=free_port(),
    )
    await put_catalog(js, manifest)


@asynccontextmanager
async def premd(settings: Settings, nc: NATS, **changes: object) -> AsyncIterator[tuple[Client, openai.AsyncOpenAI]]:
    """The scheduler and the gateway (with ``changes`` to its settings) on the test's NATS, and the SDK."""
    async with running_scheduler(settings):
        async with gateway(msgspec.structs.replace(settings, **changes)) as client:
            async with sdk(client) as api:
                yield client, api


async def visible(client: Client, *sids: str) -> None:
    """The gateway's view has the services in its catalog with their observed (downloaded) state."""
    view = client.app[VIEW]
    for sid in sids:
        await view.observed.wait_for(lambda v, s=sid: s in v and v[s].downloaded, timeout=DEADLINE_S)  # type: ignore[misc]
        await view.catalog.entries_mirror.wait_for(lambda v, s=sid: subjects.catalog_key(s) in v, DEADLINE_S)  # type: ignore[misc]


async def test_sdk_lists_models_and_autostarts_each_kind(
    settings: Settings, nc: NATS, js: JetStreamContext, ref_image: str, service_ids: Callable[[], str]
) -> None:
    chat, embed, image, audio = (service_ids() for _ in range(4))
    absent = service_ids()
    for sid, interface in ((chat, "chat"), (embed, "embeddings"), (image, "text-to-image"), (audio, "audio-to-text")):
        await add_ref_service(js, sid, ref_image, interface)
    await add_ref_service(js, absent, f"premd-test/absent-{uuid.uuid4().hex[:8]}:1", "chat")

    async with premd(settings, nc, autostart=True, autostart_wait_s=DEADLINE_S, idle_stop_s=-1.0) as (client, api):
        await visible(client, chat, embed, image, audio)

        # Autostart on: every downloaded service is offered, running or not; the one not downloaded is not.
        listed = {m.id: m for m in (await api.models.list()).data}
        assert {chat, embed, image, audio} <= set(listed) and absent not in listed
        card = listed[chat]
        assert card.owned_by == "premd" and isinstance(card.created, int)
        extension = (card.model_extra or {})["premd"]
        assert extension["state"] == "stopped" and extension["interfaces"] == ["chat"]
        assert extension["running"] is False and extension["on_demand"] is False

        # A streamed chat starts the chat service and is held until it answers.
        stream = await api.chat.completions.create(
            model=chat, messages=[{"role": "user", "content": "hello there premd"}], stream=True, max_tokens=5
        )
        pieces = [chunk.choices[0].delta.content or "" async for chunk in stream]
        assert "".join(pieces) == "hello there premd this is"
        assert len(pieces) == 5

        vectors = await api.embeddings.create(model=embed, input=["one", "two"])
        assert [len(d.embedding) for d in vectors.data] == [384, 384] and vectors.model == embed

        picture = await api.images.generate(model=image, prompt="a small cat", response_format="b64_json")
        assert picture.data and base64.b64decode(picture.data[0].b64_json or "").startswith(PNG_MAGIC)

        sound = b"RIFF\x00\x00\x00\x00WAVEfmt " + bytes(range(256)) * 40
        text = await api.audio.transcriptions.create(model=audio, file=("speech.wav", sound, "audio/wav"))
        assert text.text.startswith("reference transcription of ")

        # Started on demand, and shown so.
        started = await api.models.retrieve(chat)
        assert (started.model_extra or {})["premd"] == {
            "name": f"Ref {chat}",
            "state": "ready",
            "running": True,
            "ready": True,
            "interfaces": ["chat"],
            "on_demand": True,
        }

        # A user's start of a service running on demand makes it the user's.
        async with client.post("/v1/run-service/", json={"id": chat}) as resp:
            assert resp.status == 200, await resp.text()
        await client.app[VIEW].desired.wait_for(lambda v: not v[chat].on_demand, timeout=DEADLINE_S)
        assert ((await api.models.retrieve(chat)).model_extra or {})["premd"]["on_demand"] is False

        # Errors come in OpenAI's shape, which the SDK turns into its exceptions.
        with pytest.raises(openai.NotFoundError) as not_downloaded:
            await api.chat.completions.create(model=absent, messages=[{"role": "user", "content": "x"}])
        assert not_downloaded.value.code == "model_not_downloaded"
        assert "download" in not_downloaded.value.message.lower() and absent in not_downloaded.value.message
        with pytest.raises(openai.NotFoundError) as unknown:
            await api.embeddings.create(model="gpt-4o", input="x")
        assert unknown.value.code == "model_not_found" and "/v1/models" in unknown.value.message
        with pytest.raises(openai.NotFoundError) as retrieve_absent:
            await api.models.retrieve(absent)
        assert retrieve_absent.value.code == "model_not_downloaded"
        with pytest.raises(openai.BadRequestError) as bad_header:
            await api.embeddings.create(model=embed, input="x", extra_headers={"X-Premd-Keep-Alive": "soon"})
        assert bad_header.value.code == "request.keep_alive_invalid"
        async with client.get(f"/v1/models/{chat}") as resp:  # the raw shape, as other clients read it
            raw = await resp.json()
        assert raw["object"] == "model" and raw["id"] == chat and raw["premd"]["state"] == "ready"
        await bus.request(nc, subjects.SCHEDULER_STOP, StopService(service_id=audio), ServiceStopped, DEADLINE_S)

    # Autostart off: only what runs is offered (a stopped one is not, nor can it be started by a request).
    async with premd(settings, nc, autostart=False) as (client, api):
        await client.app[VIEW].observed.wait_for(lambda v: v[audio].phase == "stopped", timeout=DEADLINE_S)
        await visible(client, chat, embed, image, audio)
        assert sorted(m.id for m in (await api.models.list()).data) == sorted([chat, embed, image])
        with pytest.raises(openai.NotFoundError) as stopped:
            await api.models.retrieve(audio)
        assert "not running" in stopped.value.message
        with pytest.raises(openai.ConflictError):
            await api.audio.transcriptions.create(model=audio, file=("a.wav", b"RIFF", "audio/wav"))


async def test_held_request_ends_with_retry_after(
    settings: Settings, nc: NATS, js: JetStreamContext, ref_image: str, service_ids: Callable[[], str]
) -> None:
    slow = service_ids()
    await add_ref_service(js, slow, ref_image, "chat", "REF_READY_DELAY_S=120")  # loads longer than anyone waits
    async with premd(settings, nc, autostart=True, autostart_wait_s=1.0) as (client, api):
        await visible(client, slow)
        with pytest.raises(openai.APIStatusError) as held:
            await api.chat.completions.create(model=slow, messages=[{"role": "user", "content": "hi"}])
        error = held.value
        assert error.status_code == 503 and error.code == "service.not_ready"
        assert int(error.response.headers["Retry-After"]) > 0
        assert "still starting after 1 s" in error.message and "retry after" in error.message
        state = await wait_observed(js, slow, lambda s: s.phase in ("starting", "ready"))
        assert state.phase == "starting"  # the start goes on after the held request gave up
        # A request arriving now joins the start in flight and is held (and bounded) the same way.
        with pytest.raises(openai.APIStatusError) as again:
            await api.chat.completions.create(model=slow, messages=[{"role": "user", "content": "hi"}])
        assert again.value.status_code == 503 and again.value.response.headers["Retry-After"]
        await bus.request(nc, subjects.SCHEDULER_STOP, StopService(service_id=slow), ServiceStopped, DEADLINE_S)


async def test_idle_stop_stops_only_services_started_on_demand(
    settings: Settings, nc: NATS, js: JetStreamContext, ref_image: str, service_ids: Callable[[], str]
) -> None:
    mine, demanded = service_ids(), service_ids()
    await add_ref_service(js, mine, ref_image, "embeddings")
    await add_ref_service(js, demanded, ref_image, "chat")
    async with premd(settings, nc, autostart=True, autostart_wait_s=DEADLINE_S, idle_stop_s=0.5) as (client, api):
        await visible(client, mine, demanded)
        # Started by a user (the premd API): used once, then idle longer than the setting.
        async with client.post("/v1/run-service/", json={"id": mine}) as resp:
            assert resp.status == 200, await resp.text()
        await wait_observed(js, mine, lambda s: s.phase == "ready")
        await api.embeddings.create(model=mine, input="x")
        events = await Events.of_service(js, demanded)

        # Started on demand by a streamed chat: stopped once idle, by an ordinary stop operation.
        stream = await api.chat.completions.create(
            model=demanded, messages=[{"role": "user", "content": "hi"}], stream=True
        )
        assert [c async for c in stream]
        stop = await events.until(lambda e: e.kind == "stop", timeout=DEADLINE_S)
        assert stop.type == "succeeded" and stop.phase == "stopped"
        assert stop.status.startswith("idle for ")
        await wait_observed(js, demanded, lambda s: s.phase == "stopped" and not s.running)
        # The user's service, idle for longer, is still up.
        still = await wait_observed(js, mine, lambda s: True)
        assert still.phase == "ready"
        assert ((await api.models.retrieve(demanded)).model_extra or {})["premd"]["state"] == "stopped"
        await events.close()

    # The per-request header overrides the setting: "never" by default here, "0" for this request.
    async with premd(settings, nc, autostart=True, autostart_wait_s=DEADLINE_S, idle_stop_s=-1.0) as (client, api):
        await visible(client, demanded)
        events = await Events.of_service(js, demanded)
        await api.chat.completions.create(
            model=demanded,
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={"X-Premd-Keep-Alive": "0"},
        )
        stops = 0

        async def stopped_again() -> bool:
            nonlocal stops
            event = await events.next(timeout=DEADLINE_S)
            stops += event.kind == "stop" and event.type == "succeeded"
            return stops == 2  # the first test's stop, replayed, then this one

        await wait_until(stopped_again, deadline_s=DEADLINE_S, interval=0, what="idle stop after keep-alive 0")
        await events.close()

        # Back to back, each request lands before, during or after the idle stop the previous one caused:
        # each is answered (one arriving during the stop waits for it, then starts the service again).
        for _ in range(3):
            reply = await api.chat.completions.create(
                model=demanded,
                messages=[{"role": "user", "content": "again"}],
                extra_headers={"X-Premd-Keep-Alive": "0"},
            )
            assert reply.choices[0].message.content

        # Kept up ("never") by this gateway...
        await api.chat.completions.create(
            model=demanded, messages=[{"role": "user", "content": "stay"}], extra_headers={"X-Premd-Keep-Alive": "-1"}
        )
        await wait_observed(js, demanded, lambda s: s.phase == "ready")

    # ...then premd restarts: "started on demand" is the scheduler's record in KV, so a new gateway (with a
    # short setting, and no memory of the header) stops it once idle.
    async with premd(settings, nc, autostart=True, idle_stop_s=0.5) as (client, api):
        await wait_observed(js, demanded, lambda s: s.phase == "stopped", timeout=DEADLINE_S)
        assert ((await api.models.retrieve(demanded)).model_extra or {})["premd"]["state"] == "stopped"


async def test_scheduler_refuses_an_idle_stop_of_a_users_service(
    settings: Settings, nc: NATS, js: JetStreamContext, ref_image: str, service_ids: Callable[[], str]
) -> None:
    users, demanded = service_ids(), service_ids()
    await add_ref_service(js, users, ref_image, "chat")
    await add_ref_service(js, demanded, ref_image, "chat")
    idle = StopService(service_id=users, only_on_demand=True, reason="idle for 9 s")
    async with running_scheduler(settings):
        for sid in (users, demanded):
            await wait_observed(js, sid, lambda s: s.downloaded)
        await bus.request(nc, subjects.SCHEDULER_START, StartService(service_id=users), OperationAccepted, DEADLINE_S)
        on_demand = StartService(service_id=demanded, on_demand=True)
        await bus.request(nc, subjects.SCHEDULER_START, on_demand, OperationAccepted, DEADLINE_S)
        for sid in (users, demanded):
            await wait_observed(js, sid, lambda s: s.phase == "ready")

        with pytest.raises(ConflictError, match="not started on demand"):
            await bus.request(nc, subjects.SCHEDULER_STOP, idle, ServiceStopped, DEADLINE_S)
        assert (await wait_observed(js, users, lambda s: True)).phase == "ready"  # nothing changed

        events = await Events.of_service(js, demanded)
        idle = msgspec.structs.replace(idle, service_id=demanded)
        await bus.request(nc, subjects.SCHEDULER_STOP, idle, ServiceStopped, DEADLINE_S)
        stop = await events.until(lambda e: e.kind == "stop")
        assert (stop.type, stop.status, stop.phase) == ("succeeded", "idle for 9 s", "stopped")
        await events.close()

        # Started on demand, then started by a user: the user's now, refused as well.
        await bus.request(nc, subjects.SCHEDULER_START, on_demand, OperationAccepted, DEADLINE_S)
        await wait_observed(js, demanded, lambda s: s.phase == "ready")
        await bus.request(nc, subjects.SCHEDULER_START, StartService(service_id=demanded), OperationAccepted, 5)
        with pytest.raises(ConflictError, match="not started on demand"):
            await bus.request(nc, subjects.SCHEDULER_STOP, idle, ServiceStopped, DEADLINE_S)
