"""One premd component as its own process (``python -m <component>``), to be SIGKILLed and started again."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from tests.testbed.util import StopWaiting, wait_until


class ComponentProcess:
    """``python -m <name>`` with premd's settings in ``env`` (PREMD_*), its output appended to ``log``."""

    def __init__(self, name: str, log: Path, **env: str) -> None:
        self.name = name
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("PREMD_", "PREM_"))}
        self.env.update(PREMD_LOG_LEVEL="INFO", **env)
        self.log = log
        self.proc: asyncio.subprocess.Process | None = None
        self.starts = 0

    async def start(self, ready: Callable[[], Awaitable[bool]], deadline_s: float = 30.0) -> None:
        """Start it and wait until ``ready()`` (fails at once with its log when it exits first)."""
        with self.log.open("ab") as out:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", self.name, env=self.env, stdout=out, stderr=out
            )
        self.starts += 1
        proc = self.proc

        async def serving() -> bool:
            if proc.returncode is not None:
                raise StopWaiting(f"{self.name} exited {proc.returncode}: {self.log.read_text()[-3000:]}")
            try:
                return await ready()
            except (OSError, TimeoutError, ConnectionError):
                return False

        await wait_until(serving, deadline_s=deadline_s, interval=0.05, what=f"{self.name} ready")

    async def kill(self, sig: int = signal.SIGKILL) -> int | None:
        """Send ``sig`` and wait for the exit; returns the exit status (None when it was not running)."""
        if self.proc is None or self.proc.returncode is not None:
            return None
        self.proc.send_signal(sig)
        async with asyncio.timeout(30):
            return await self.proc.wait()
