"""Logging set-up: the one place handlers and formats are configured (only entry points call it)."""

from __future__ import annotations

import logging
import sys


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(
        level=level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )
    # aiohttp's access log is noisy at INFO for Prem App's 10 s polling.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
