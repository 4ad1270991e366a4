"""``premd serve``'s supervisor: each component in a process of its own, restarted when it dies.

The gateway's event loop then shares its CPU with nothing: a reconcile pass at 1,000 services or the
validation of a 10,000-manifest registry runs in another process (bench/gateway.py measured one loop for
everything adding ~20 ms to the proxy's p99, another process adding nothing). Each child is
``python -m <component>`` (the same entry point as a deployment of separate processes), in its own session
so that a terminal's Ctrl-C reaches only premd, which stops them in order; ``die_with_parent`` ends them
if premd itself is killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Mapping, Sequence

from common import subjects
from common.embedded_nats import die_with_parent
from common.restarts import RestartBudget

logger = logging.getLogger("premd")

STOP_MARGIN_S = 5.0
"""A child gets its own shutdown bound plus this before it is killed (it needs a moment to exit after it)."""


POLL_S = 0.02


class ComponentFailedError(RuntimeError):
    """A component process kept dying: premd cannot serve without it."""


def describe(returncode: int) -> str:
    return f"signal {signal.Signals(-returncode).name}" if returncode < 0 else f"exit status {returncode}"


class Child:
    """One component process: ``python -m <name>`` with premd's environment (and the bus it is to use)."""

    def __init__(self, name: str, env: Mapping[str, str], budget: RestartBudget) -> None:
        self.name = name
        self.env = dict(env)
        self.budget = budget
        self.proc: asyncio.subprocess.Process | None = None
        self.restarts = 0

    async def spawn(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            self.name,
            env=self.env,
            stdin=asyncio.subprocess.DEVNULL,  # stdout and stderr are premd's: its log is theirs
            preexec_fn=die_with_parent,
            start_new_session=True,
        )

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    async def stop(self, timeout: float) -> None:
        """SIGTERM, then SIGKILL after ``timeout``; logs a child that had to be killed or ended badly."""
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        proc.terminate()
        try:
            async with asyncio.timeout(timeout):
                code = await proc.wait()
        except TimeoutError:
            logger.warning("%s did not exit within %.0f s of SIGTERM: killed", self.name, timeout)
            proc.kill()
            code = await proc.wait()
        if code not in (0, -signal.SIGTERM):
            logger.warning("%s stopped with %s", self.name, describe(code))


class Supervisor:
    """The component processes: started together, each restarted with backoff, stopped gateway first."""

    def __init__(self, env: Mapping[str, str], stop_timeout_s: float) -> None:
        self.env = dict(env)
        self.children: list[Child] = []
        self.stop_timeout_s = stop_timeout_s
        self._stopping = False

    @property
    def stopping(self) -> bool:
        return self._stopping

    async def spawn(self, names: Sequence[str]) -> None:
        """Start these components (the gateway answers GET /v1/ without the others; /readyz waits for all)."""
        children = [Child(name, self.env, RestartBudget()) for name in names]
        self.children.extend(children)
        await asyncio.gather(*(child.spawn() for child in children))

    async def listening(self, name: str, host: str, port: int, timeout: float, stop: asyncio.Event) -> None:
        """Until ``name`` accepts connections on host:port, has exited, ``timeout`` passed or ``stop`` is set."""
        child = next(child for child in self.children if child.name == name)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (
            port
            and not stop.is_set()
            and loop.time() < deadline
            and child.proc is not None
            and child.proc.returncode is None
        ):
            try:
                _, writer = await asyncio.open_connection(host, port)
            except OSError:
                await asyncio.sleep(POLL_S)
                continue
            writer.close()
            return

    async def keep(self) -> None:
        """Restart every child that dies; raises ComponentFailedError when one cannot be brought back."""
        tasks = [asyncio.create_task(self._keep(child), name=f"keep {child.name}") for child in self.children]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _keep(self, child: Child) -> None:
        while True:
            assert child.proc is not None
            code = await child.proc.wait()
            if self._stopping:
                return
            how = describe(code)
            delay = child.budget.died()
            if delay is None:
                window = child.budget.window_s
                raise ComponentFailedError(
                    f"{child.name} exited {child.budget.recent} times within {window:g} s (last: {how}); giving up"
                )
            logger.error("%s exited (%s); restarting it in %.1f s", child.name, how, delay)
            await asyncio.sleep(delay)
            if self.stopping:  # SIGTERM came during the pause
                return
            await child.spawn()
            child.restarts += 1
            logger.warning("%s restarted (restart %d)", child.name, child.restarts)

    async def stop(self) -> None:
        """The gateway first (no new requests), then the workers together; each within its bound."""
        self._stopping = True
        bound = self.stop_timeout_s + STOP_MARGIN_S
        front = [child for child in self.children if child.name == subjects.GATEWAY]
        rest = [child for child in self.children if child.name != subjects.GATEWAY]
        for group in (front, rest):
            with contextlib.suppress(ProcessLookupError):
                await asyncio.gather(*(child.stop(bound) for child in group))
