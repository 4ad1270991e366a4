"""Pulls from the local OCI registry: progress events, monotonic percentage, success last; errors end in "failed"."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiodocker
import msgspec
import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from common import bus, subjects
from common.messages import OperationAccepted, PullImage, ServiceState
from common.settings import Settings
from tests.support.images import with_own_layer
from tests.support.scheduler_bed import (
    Events,
    new_service_id,
    observed,
    put_catalog,
    ref_manifest,
    running_scheduler,
    wait_observed,
)
from tests.testbed.oci_registry import OciRegistry

pytestmark = pytest.mark.docker

BLOB_BYTES = 16 * 1024 * 1024


@pytest.fixture
async def remote_image(docker: aiodocker.Docker, ref_image: str, oci_registry: OciRegistry) -> AsyncIterator[str]:
    """An image with a layer of its own (random bytes) in the registry, absent locally."""
    async with with_own_layer(docker, oci_registry, ref_image, "pull", BLOB_BYTES) as remote:
        yield remote


async def _pull(nc: NATS, sid: str) -> OperationAccepted:
    return await bus.request(nc, subjects.SCHEDULER_PULL, PullImage(service_id=sid), OperationAccepted, 5)


async def test_pull_reports_monotonic_progress_then_success(
    nc: NATS, js: JetStreamContext, settings: Settings, remote_image: str
) -> None:
    sid, other = new_service_id(), new_service_id()
    await put_catalog(js, ref_manifest(sid, remote_image), ref_manifest(other, remote_image))
    async with running_scheduler(settings):
        state = await wait_observed(js, sid, lambda s: s.service_id == sid)
        assert not state.downloaded
        events = await Events.of_service(js, sid)
        kv = await js.key_value(subjects.KV_OBSERVED)
        phases: list[str] = []
        watcher = await kv.watch(other)

        async def record() -> None:
            async for entry in watcher:
                if entry is not None and entry.value:
                    phases.append(msgspec.json.decode(entry.value, type=ServiceState).phase)

        recorder = asyncio.create_task(record())
        first = await _pull(nc, sid)
        second = await _pull(nc, sid)  # a second client joins the same pull
        third = await _pull(nc, other)  # another service with the same image too
        assert second.joined and second.operation_id == first.operation_id
        assert third.joined and third.operation_id == first.operation_id
        final = await events.final(first.operation_id, timeout=60)
        await wait_observed(js, other, lambda s: s.downloaded)
        await watcher.stop()  # type: ignore[no-untyped-call]
        recorder.cancel()
        assert "pulling" in phases, phases  # the service that joined showed the pull too
        after = await observed(js, sid)  # downloaded is in KV before the event announcing it
        assert after is not None and after.downloaded and after.downloaded_image == remote_image
        assert not after.needs_update and after.phase == "stopped"

        assert final.type == "succeeded" and final.status == "Download complete" and final.percentage == 100.0
        progress = [e for e in events.seen if e.type == "progress"]
        assert progress, events.seen
        percentages = [e.percentage or 0.0 for e in progress]
        assert percentages == sorted(percentages)
        assert max(e.bytes_total or 0 for e in progress) >= BLOB_BYTES * 0.9
        assert any(e.layers and e.rate_bps is not None for e in progress)
        assert events.seen[-1] is final
        assert [e.type for e in events.seen].count("succeeded") == 1
        assert all(e.status != "Download complete" for e in events.seen[:-1])
        await events.close()
        assert (await wait_observed(js, other, lambda s: s.downloaded)).downloaded


async def test_pull_of_a_missing_tag_ends_with_an_error_event(
    nc: NATS, js: JetStreamContext, settings: Settings, oci_registry: OciRegistry
) -> None:
    sid = new_service_id()
    await put_catalog(js, ref_manifest(sid, f"{oci_registry.host}/premd-test/nothing-here:404"))
    async with running_scheduler(settings):
        events = await Events.of_service(js, sid)
        accepted = await _pull(nc, sid)
        final = await events.final(accepted.operation_id, timeout=30)
        assert final.type == "failed" and final.error_code == "image.pull_failed"
        assert final.status != "Download complete" and final.message
        assert all(e.status != "Download complete" for e in events.seen)
        state = await observed(js, sid)
        assert state is not None and not state.downloaded and state.phase == "stopped"
        await events.close()


async def test_pull_whose_state_refresh_fails_still_ends_and_leaves_the_pulling_phase(
    nc: NATS, js: JetStreamContext, settings: Settings, remote_image: str
) -> None:
    sid = new_service_id()
    await put_catalog(js, ref_manifest(sid, remote_image))
    async with running_scheduler(settings) as scheduler:
        await wait_observed(js, sid, lambda s: s.service_id == sid)

        async def broken() -> None:
            raise RuntimeError("KV write failed")

        scheduler.reconciler.refresh_downloads = broken  # type: ignore[method-assign]
        events = await Events.of_service(js, sid)
        accepted = await _pull(nc, sid)
        final = await events.final(accepted.operation_id, timeout=60)
        assert final.type == "failed" and final.error_code == "internal"  # not "Download complete": KV may lag
        assert sid not in scheduler.ops.pulling
        state = await observed(js, sid)
        assert state is not None and state.phase == "stopped"
        await events.close()
