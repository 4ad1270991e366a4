"""``premd``: the console command. ``premd serve`` runs all four components in one process."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

from builder.component import Builder
from common.component import ComponentType, Running, load_settings, stop_on_signals
from common.embedded_nats import EmbeddedNats, NatsServerError
from common.logs import setup_logging
from common.settings import Settings
from gateway.component import Gateway
from registry_sync.component import RegistrySync
from scheduler.component import Scheduler

logger = logging.getLogger("premd")

# Order matters: workers first, so the gateway's first requests find them; stopped in reverse.
COMPONENTS: tuple[ComponentType, ...] = (RegistrySync, Scheduler, Builder, Gateway)


async def serve(settings: Settings, stop: asyncio.Event | None = None) -> None:
    """Run everything until ``stop`` is set (SIGTERM/SIGINT by default)."""
    stop = stop or stop_on_signals()
    embedded: EmbeddedNats | None = None
    running = Running(settings)
    try:
        url = settings.nats_url
        if url is None:
            embedded = EmbeddedNats(os.path.join(settings.data_dir, "nats"), port=settings.nats_port)
            url = await embedded.start()
        await running.start(url, COMPONENTS)
        logger.info("premd serving on http://%s:%d (NATS %s)", settings.host, settings.port, url)
        await stop.wait()
        logger.info("premd stopping")
    finally:
        await running.stop()
        if embedded is not None:
            await embedded.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="premd", description="Run AI model services on this machine.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run the gateway, scheduler, builder and registry sync (and NATS if needed)")
    args = parser.parse_args(argv)
    if args.command == "serve":
        settings = load_settings()
        setup_logging(settings.log_level)
        try:
            asyncio.run(serve(settings))
        except NatsServerError as exc:  # e.g. its port is taken: one line that says what to do, no traceback
            print(f"premd: {exc}", file=sys.stderr)
            raise SystemExit(1) from None
