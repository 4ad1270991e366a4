"""What every entry point does first: settings (or one line naming the bad variable) and the stop signals.

Kept apart from common/component.py so that ``premd serve``'s supervisor, which runs no component itself,
starts without importing the NATS client.
"""

from __future__ import annotations

import asyncio
import signal
import sys

from common.errors import SettingsError
from common.settings import Settings


def load_settings() -> Settings:
    """Settings for an entry point: a bad value ends the process with one line naming the variable."""
    try:
        return Settings.from_env()
    except SettingsError as exc:
        print(f"premd: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def stop_on_signals() -> asyncio.Event:
    """An event set by SIGTERM or SIGINT (installed on the running loop)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop
