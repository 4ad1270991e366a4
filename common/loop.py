"""The event loop premd's processes run on: uvloop where it is installed, asyncio's own otherwise.

uvloop's transports make the gateway's byte-stream proxy about a third faster per request (bench/ measures
it side by side); nothing in premd depends on which loop runs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)`` on uvloop when available."""
    try:
        import uvloop
    except ImportError:  # not every platform has it (Windows): the stdlib loop does the same work
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)
