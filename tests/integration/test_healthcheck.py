"""premd.healthcheck (the compose stack's container checks) against a real bus with premd's authorization."""

from __future__ import annotations

from pathlib import Path

from common import subjects
from common.component import Running
from common.nats_auth import credentials_path
from common.settings import Settings
from premd.healthcheck import component_answers, gateway_ready
from registry_sync.component import RegistrySync


async def test_a_component_is_healthy_while_it_answers_its_ping(settings: Settings, bus_credentials: Path) -> None:
    reader = str(credentials_path(bus_credentials, subjects.READER))
    before = await component_answers(settings, subjects.REGISTRY_SYNC, reader, timeout_s=1.0)
    assert before is not None and "registry_sync did not answer" in before
    running = Running(settings)
    await running.start(settings.nats_url or "", [RegistrySync])
    try:
        assert await component_answers(settings, subjects.REGISTRY_SYNC, reader) is None
    finally:
        await running.stop()


async def test_the_ping_needs_valid_credentials(settings: Settings, tmp_path: Path) -> None:
    forged = tmp_path / "forged.json"
    forged.write_text('{"user": "reader", "password": "not-it", "inbox_prefix": "_INBOX_reader"}')
    problem = await component_answers(settings, subjects.REGISTRY_SYNC, str(forged), timeout_s=2.0)
    assert problem is not None and problem.startswith("bus ")


def test_the_gateway_is_unhealthy_when_readyz_does_not_answer(settings: Settings) -> None:
    problem = gateway_ready(settings, timeout_s=1.0)
    assert problem is not None and f"127.0.0.1:{settings.port}/readyz" in problem
