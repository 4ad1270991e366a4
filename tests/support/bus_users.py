"""Connections as one of premd's bus users, so a component under test has exactly its production permissions."""

from __future__ import annotations

from nats.aio.client import Client as NATS

from common import bus, nats_auth, subjects
from common.settings import Settings


async def connect_as(settings: Settings, user: str) -> NATS:
    """A connection to the test's NATS as ``user`` (a component or role name from common/subjects.py)."""
    return await bus.connect(settings.nats_url or "", f"test-{user}", nats_auth.client_credentials(settings, user))


def as_admin(settings: Settings, *names: str) -> dict[str, nats_auth.BusCredentials]:
    """Credentials for test-only components (no bus user of their own): the unrestricted admin's."""
    admin = nats_auth.client_credentials(settings, subjects.ADMIN)
    assert admin is not None
    return dict.fromkeys(names, admin)
