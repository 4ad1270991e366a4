"""Connections as one of premd's bus users, so a component under test has exactly its production permissions;
raw nats-py ones for the tests of the server's own refusals."""

from __future__ import annotations

from nats.aio.client import Client as NATS

from common import bus, nats_auth, subjects
from common.settings import Settings
from tests.testbed.util import wait_until

REFUSAL_DEADLINE_S = 5.0


async def connect_as(settings: Settings, user: str) -> NATS:
    """A connection to the test's NATS as ``user`` (a component or role name from common/subjects.py)."""
    return await bus.connect(settings.nats_url or "", f"test-{user}", nats_auth.client_credentials(settings, user))


def as_admin(settings: Settings, *names: str) -> dict[str, nats_auth.BusCredentials]:
    """Credentials for test-only components (no bus user of their own): the unrestricted admin's."""
    admin = nats_auth.client_credentials(settings, subjects.ADMIN)
    assert admin is not None
    return dict.fromkeys(names, admin)


class RawClient:
    """A plain nats-py connection as one bus user, collecting the server's permission errors."""

    def __init__(self) -> None:
        self.nc = NATS()
        self.errors: list[str] = []

    async def connect(self, url: str, creds: nats_auth.BusCredentials) -> RawClient:
        async def on_error(exc: Exception) -> None:
            self.errors.append(str(exc))

        await self.nc.connect(
            url,
            user=creds.user,
            password=creds.password,
            inbox_prefix=creds.inbox_prefix,
            error_cb=on_error,
            allow_reconnect=False,
        )
        return self

    async def refused(self, what: str, deadline_s: float = REFUSAL_DEADLINE_S) -> bool:
        """Whether the server reported a permissions violation naming ``what`` (nats-py lower-cases its text)."""
        await self.nc.flush()
        what = what.lower()

        async def seen() -> bool:
            return any("permissions violation" in e and what in e.lower() for e in self.errors)

        try:
            await wait_until(seen, deadline_s=deadline_s, interval=0.01)
        except TimeoutError:
            return False
        return True
