"""``premd serve``: run all four components in one process (and an embedded nats-server when none is set)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from common.component import ComponentType
    from common.settings import Settings

logger = logging.getLogger("premd")


def components() -> tuple[ComponentType, ...]:
    """Order matters: workers first, so the gateway's first requests find them; stopped in reverse.

    Imported here, not at module level, so the client commands (``premd ls`` ...) start without loading them.
    """
    from builder.component import Builder
    from gateway.component import Gateway
    from registry_sync.component import RegistrySync
    from scheduler.component import Scheduler

    return (RegistrySync, Scheduler, Builder, Gateway)


async def serve(settings: Settings, stop: asyncio.Event | None = None) -> None:
    """Run everything until ``stop`` is set (SIGTERM/SIGINT by default)."""
    from common.component import Running, stop_on_signals, unless_stopped
    from common.embedded_nats import EmbeddedNats, wait_stopped_or_bus_lost
    from common.nats_auth import credentials_dir, ensure_credentials, server_config

    stop = stop or stop_on_signals()
    embedded: EmbeddedNats | None = None
    running = Running(settings)
    try:
        url = settings.nats_url
        credentials = None
        if url is None:
            # The embedded bus admits only premd's own users, each with its own permissions.
            credentials = ensure_credentials(credentials_dir(settings.data_dir))
            embedded = EmbeddedNats(
                os.path.join(settings.data_dir, "nats"), port=settings.nats_port, config=server_config(credentials)
            )
            url = await embedded.start()
        if await unless_stopped(running.start(url, components(), credentials), stop, settings.shutdown_timeout_s):
            logger.info("premd serving on http://%s:%d (NATS %s)", settings.host, settings.port, url)
            await wait_stopped_or_bus_lost(stop, embedded)
        logger.info("premd stopping")
    finally:
        await running.stop()
        if embedded is not None:
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
    from common.component import load_settings
    from common.embedded_nats import NatsServerError
    from common.logs import setup_logging
    from common.loop import run as run_loop

    settings = load_settings()
    setup_logging(settings.log_level)
    try:
        run_loop(serve(settings))
    except NatsServerError as exc:  # e.g. its port is taken: one line that says what to do, no traceback
        print(f"premd: {exc}", file=sys.stderr)
        return 1
    return 0
