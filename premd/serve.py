"""``premd serve``: an embedded nats-server (unless one is set) and each component in a process of its own.

premd serve is the supervisor (premd/supervisor.py): it runs no component itself and imports none, so it
starts quickly and stays small; the components are ``python -m <component>`` children on the same bus.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from common.settings import Settings

logger = logging.getLogger("premd")

GATEWAY_FIRST_S = 10.0
"""The workers start once the gateway listens, or after this long (a gateway that cannot start does not
hold the others back; it is restarted like any component)."""


def child_env(url: str, credentials: str | None) -> dict[str, str]:
    """premd's own environment, plus the bus the children are to use (the embedded one and its users)."""
    env = dict(os.environ)
    env["PREMD_NATS_URL"] = url
    if credentials is not None:
        env["PREMD_NATS_CREDENTIALS"] = credentials
    return env


async def serve(settings: Settings, stop: asyncio.Event | None = None) -> None:
    """Run everything until ``stop`` is set (SIGTERM/SIGINT by default).

    Raises NatsServerError when the embedded bus cannot be started or brought back, ComponentFailedError
    when a component keeps dying.
    """
    from common import subjects
    from common.embedded_nats import EmbeddedNats, wait_stopped_or_bus_lost
    from common.entry import stop_on_signals
    from common.nats_auth import credentials_dir, ensure_credentials, server_config
    from premd.supervisor import Supervisor

    stop = stop or stop_on_signals()
    embedded: EmbeddedNats | None = None
    supervisor: Supervisor | None = None
    workers = [name for name in subjects.COMPONENTS if name != subjects.GATEWAY]
    try:
        url = settings.nats_url
        credentials = None
        if url is None:
            # The embedded bus admits only premd's own users, each with its own permissions.
            directory = credentials_dir(settings.data_dir)
            embedded = EmbeddedNats(
                os.path.join(settings.data_dir, "nats"),
                port=settings.nats_port,
                config=server_config(ensure_credentials(directory)),
            )
            credentials = str(directory)
        # The bus's address is known (its port is a setting): the gateway imports while the nats-server recovers
        # JetStream (it waits for the port, common/component.py), so that GET /v1/ answers as early as it can.
        if embedded is not None:
            url = embedded.url
        assert url is not None
        supervisor = Supervisor(child_env(url, credentials), settings.shutdown_timeout_s)
        await supervisor.spawn([subjects.GATEWAY])
        if embedded is not None:
            await embedded.start()
        # The workers once the gateway listens: on a busy machine four interpreters importing at once would
        # delay the one answer premd's users wait for (bench/serve.py measures health and readiness).
        await supervisor.listening(subjects.GATEWAY, settings.host, settings.port, GATEWAY_FIRST_S, stop)
        if not stop.is_set():
            await supervisor.spawn(workers)
        logger.info("premd serving on http://%s:%d (NATS %s)", settings.host, settings.port, url)
        keeping = asyncio.create_task(supervisor.keep())
        bus = asyncio.create_task(wait_stopped_or_bus_lost(stop, embedded))
        try:
            await asyncio.wait({keeping, bus}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (keeping, bus):
                task.cancel()
            await asyncio.gather(keeping, bus, return_exceptions=True)
        for task in (keeping, bus):  # a component or the bus that could not be brought back
            if not task.cancelled() and (exc := task.exception()) is not None:
                raise exc
        logger.info("premd stopping")
    finally:
        if supervisor is not None:
            await supervisor.stop()
        if embedded is not None:  # last: the components drained through it
            await embedded.stop()


def register(sub: Any) -> None:
    """Add ``serve`` to premd's sub-command parser (``sub``: ``add_subparsers()``'s result)."""
    parser: argparse.ArgumentParser = sub.add_parser(
        "serve",
        help="run the gateway, scheduler, builder and registry sync (and NATS if needed)",
        description="Run premd: the gateway, scheduler, builder and registry sync, and an embedded nats-server "
        "unless PREMD_NATS_URL is set. Settings come from the environment (PREMD_*).",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from common.embedded_nats import NatsServerError
    from common.entry import load_settings
    from common.logs import setup_logging
    from common.loop import run as run_loop
    from premd.supervisor import ComponentFailedError

    settings = load_settings()
    setup_logging(settings.log_level)
    try:
        run_loop(serve(settings))
    except (NatsServerError, ComponentFailedError) as exc:  # one line that says what failed, no traceback
        print(f"premd: {exc}", file=sys.stderr)
        return 1
    return 0
