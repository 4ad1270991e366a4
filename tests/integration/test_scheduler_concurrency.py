"""Slow scheduler commands answer concurrently (issue 9, defect 6): six GET /v1/stats/<id> at once all answer."""

from __future__ import annotations

import asyncio

import aiodocker
import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from common.settings import Settings
from tests.integration.edge_support import gateway
from tests.support.scheduler_bed import (
    cleanup_service,
    new_service_id,
    put_catalog,
    ref_manifest,
    running_scheduler,
    start_and_wait,
    wait_observed,
)
from tests.testbed.util import free_port

pytestmark = pytest.mark.docker


async def test_six_stats_requests_at_once_all_answer(
    nc: NATS, js: JetStreamContext, settings: Settings, docker: aiodocker.Docker, ref_image: str
) -> None:
    """Docker samples stats for 1-2 s: answered one at a time, six requests outlast the 5 s request deadline."""
    sid = new_service_id()
    await put_catalog(js, ref_manifest(sid, ref_image, defaultExternalPort=free_port()))
    try:
        async with running_scheduler(settings), gateway(settings) as client:
            await wait_observed(js, sid, lambda s: s.downloaded)
            assert (await start_and_wait(nc, js, sid)).type == "succeeded"

            async def stats() -> tuple[int, dict[str, object]]:
                async with client.get(f"/v1/stats/{sid}") as resp:
                    return resp.status, await resp.json()

            answers = await asyncio.gather(*(stats() for _ in range(6)))
            assert [status for status, _ in answers] == [200] * 6, answers
            assert all(body["id"] == sid for _, body in answers)
    finally:
        await cleanup_service(docker, sid)
