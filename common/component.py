"""How a component process lives: connect, start, wait for SIGTERM/SIGINT, stop within a bound, close."""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import os
import urllib.parse
from collections.abc import Coroutine, Mapping, Sequence
from typing import Any, ClassVar

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.micro.service import Service

from common import bus, nats_auth
from common.entry import load_settings, stop_on_signals
from common.jetstream import ensure_resources
from common.logs import setup_logging
from common.loop import run as run_loop
from common.nats_auth import BusCredentials
from common.settings import Settings
from common.version import VERSION

logger = logging.getLogger(__name__)


class Component(abc.ABC):
    """A premd component: a NATS client that registers a micro service and owns its tasks."""

    name: ClassVar[str]

    def __init__(self, settings: Settings, nc: NATS) -> None:
        self.settings = settings
        self.nc = nc

    @abc.abstractmethod
    async def start(self) -> None:
        """Register endpoints and start background work; return once serving."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Stop intake, let in-flight work finish, cancel what remains. Called once."""


ComponentType = type[Component]


class Running:
    """Components started on their own connections, stopped in reverse order."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._started: list[tuple[Component, NATS]] = []

    async def start(
        self,
        nats_url: str,
        components: Sequence[ComponentType],
        credentials: Mapping[str, BusCredentials] | None = None,
    ) -> None:
        """Each component on its own connection, as its own bus user (``credentials``, else the settings')."""
        for cls in components:
            creds = credentials[cls.name] if credentials else nats_auth.client_credentials(self.settings, cls.name)
            nc = await bus.connect(nats_url, name=f"premd-{cls.name}", credentials=creds)
            comp = cls(self.settings, nc)
            try:
                await comp.start()
            except BaseException:
                await nc.close()
                raise
            self._started.append((comp, nc))
            logger.info("%s started", cls.name)

    def get(self, cls: type[Component]) -> Component:
        for comp, _ in self._started:
            if isinstance(comp, cls):
                return comp
        raise KeyError(cls.name)

    async def stop(self) -> None:
        while self._started:
            comp, nc = self._started.pop()
            try:
                async with asyncio.timeout(self.settings.shutdown_timeout_s):
                    await comp.stop()
            except TimeoutError:
                logger.warning("%s did not stop within %.0f s", comp.name, self.settings.shutdown_timeout_s)
            except Exception:  # boundary: keep stopping the others
                logger.exception("%s failed while stopping", comp.name)
            if nc.is_connected:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(self.settings.shutdown_timeout_s):
                        await nc.drain()
            if not nc.is_closed:
                with contextlib.suppress(Exception):
                    await nc.close()
            logger.info("%s stopped", comp.name)


# --- SIGTERM during start-up (issue 9) ---


async def unless_stopped(work: Coroutine[Any, Any, None], stop: asyncio.Event, grace_s: float) -> bool:
    """Run a start-up step until it is done or ``stop`` is set (SIGTERM while, e.g., Docker hangs).

    True when the step finished (its exception propagates); False when stopped: the step is cancelled
    and given ``grace_s`` to unwind.
    """
    task = asyncio.ensure_future(work)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
    if task.done():
        task.result()
        return True
    task.cancel()
    await asyncio.wait({task}, timeout=grace_s)
    logger.info("stopped during start-up")
    return False


def main_for(cls: ComponentType) -> None:
    """``python -m <component>``: run one component against PREMD_NATS_URL (or the local default)."""
    settings = load_settings()
    setup_logging(settings.log_level)
    url = settings.nats_url or f"nats://127.0.0.1:{settings.nats_port}"

    async def start(running: Running) -> None:
        await wait_for_bus(url, BUS_WAIT_S)
        await running.start(url, [cls])

    async def run() -> None:
        stop = stop_on_signals()
        running = Running(settings)
        try:
            if await unless_stopped(start(running), stop, settings.shutdown_timeout_s):
                await stop.wait()
        finally:
            await running.stop()
            await end_stragglers(STRAGGLERS_S)

    run_loop(run())


# --- serveproc: a component process may start before its bus, and always ends (issue 13) ---

STRAGGLERS_S = 5.0


async def end_stragglers(bound: float) -> None:
    """Cancel the tasks still left once the component stopped (the NATS client's, mostly), within ``bound``.

    asyncio.run would wait for them without a bound: a library task that swallows its cancellation (seen when
    the bus vanished while the component stopped) kept a component process alive after premd was gone.
    """
    current = asyncio.current_task()
    left = [task for task in asyncio.all_tasks() if task is not current]
    for task in left:
        task.cancel()
    if not left:
        return
    _, pending = await asyncio.wait(left, timeout=bound)
    if pending:
        logger.warning("%d task(s) ignored cancellation at exit: %s", len(pending), [t.get_name() for t in pending])
        logging.shutdown()
        os._exit(0)  # the component stopped: nothing of its state is in these tasks


BUS_WAIT_S = 30.0
"""How long ``python -m <component>`` waits for its NATS to accept connections before connecting anyway (and
failing with the client's own error). ``premd serve`` starts the gateway while the embedded nats-server
starts, so that the gateway's imports and the server's JetStream recovery overlap."""
BUS_POLL_S = 0.02


async def wait_for_bus(url: str, timeout: float) -> None:
    """Until the (first) server of ``url`` accepts a TCP connection, at most ``timeout``.

    A plain socket, not the NATS client: its failed attempts would each log an error.
    """
    try:
        first = urllib.parse.urlsplit(url.split(",")[0].strip())
        host, port = first.hostname or "127.0.0.1", first.port or 4222
    except ValueError:  # not a URL this can read: the client reports it
        return
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    said = False
    while True:
        try:
            _, writer = await asyncio.open_connection(host, port)
        except OSError:
            if loop.time() >= deadline:
                return
            if not said:
                logger.info("waiting for NATS at %s:%d", host, port)
                said = True
            await asyncio.sleep(BUS_POLL_S)
            continue
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return


class ServiceComponent(Component):
    """A worker component: JetStream resources ensured, a micro service with an info endpoint and its own."""

    description: ClassVar[str]
    js: JetStreamContext

    _service: Service | None = None
    _inflight: bus.InFlight | None = None

    def endpoints(self) -> list[bus.Endpoint]:
        """The component's command endpoints."""
        return []

    async def setup(self) -> None:
        """Runs before the endpoints take requests (load state, start background tasks)."""

    async def teardown(self) -> None:
        """Runs after intake stopped: finish or cancel in-flight work, within the caller's bound."""

    async def start(self) -> None:
        self.js = self.nc.jetstream()
        await ensure_resources(self.js)
        await self.setup()
        self._inflight = bus.InFlight()
        endpoints = self.endpoints()
        self._service = await bus.serve(self.nc, self.name, VERSION, self.description, endpoints, self._inflight)

    async def stop(self) -> None:
        """Stop intake, give requests being answered half the shutdown bound, cancel the rest, tear down."""
        if self._service is not None:
            with contextlib.suppress(Exception):
                await self._service.stop()
        if self._inflight is not None:
            if cancelled := await self._inflight.finish(self.settings.shutdown_timeout_s / 2):
                logger.warning("%s: %d request(s) cancelled at shutdown", self.name, cancelled)
        await self.teardown()
