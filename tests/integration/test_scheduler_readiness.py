"""Custom services without ``GET /v1/`` become ready (issue 9, defect 11).

An HTTP service answering 404 there is checked by TCP instead; a manifest's ``readinessCheck`` says which
check to use (``tcp`` for a service that speaks no HTTP at all).
"""

from __future__ import annotations

from typing import Any

import aiodocker
import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from common.settings import Settings
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

PORT = 8000
SILENT_LISTENER = (
    "python3 -c \"import socket; s = socket.socket(); s.bind(('0.0.0.0', 8000)); s.listen(8); "
    'held = [s.accept() for _ in iter(int, 1)]"'
)


async def _start(nc: NATS, js: JetStreamContext, settings: Settings, sid: str, base_image: str, **fields: Any) -> str:
    manifest = ref_manifest(
        sid, base_image, defaultPort=PORT, defaultExternalPort=free_port(), readinessTimeoutS=8, **fields
    )
    await put_catalog(js, manifest)
    async with running_scheduler(settings):
        await wait_observed(js, sid, lambda s: s.downloaded)
        final = await start_and_wait(nc, js, sid)
    assert final.type == "succeeded", final
    return final.phase or ""


async def test_http_service_without_v1_is_ready_by_tcp(
    nc: NATS, js: JetStreamContext, settings: Settings, docker: aiodocker.Docker, base_image: str
) -> None:
    """``python3 -m http.server`` answers 404 to ``GET /v1/``: up all the same."""
    sid = new_service_id("custom")
    try:
        phase = await _start(nc, js, settings, sid, base_image, command=f"python3 -m http.server {PORT}")
        assert phase == "ready"
    finally:
        await cleanup_service(docker, sid)


async def test_manifest_readiness_check_tcp(
    nc: NATS, js: JetStreamContext, settings: Settings, docker: aiodocker.Docker, base_image: str
) -> None:
    """A listener that never says a word: no HTTP probe succeeds; ``readinessCheck: tcp`` says how to check it."""
    sid = new_service_id("custom")
    try:
        phase = await _start(nc, js, settings, sid, base_image, command=SILENT_LISTENER, readinessCheck="tcp")
        assert phase == "ready"
    finally:
        await cleanup_service(docker, sid)
