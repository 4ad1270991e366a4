"""Service logs on the bus: a container's lines on request, or followed as chunks on a subject of the asker's.

A followed session lives as long as its reader renews it (``SCHEDULER_LOGS_RENEW``, at least every
``LEASE_S``): a gateway that dies or forgets must not leave Docker log streams open for ever. It ends when the
container's log ends (it stopped or was removed), the reader says ``stop``, or the lease runs out; the last
chunk then says ``end``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field

from nats.aio.client import Client as NATS

from common import codec, subjects
from common.errors import AppError, Code, InvalidError, NotFoundError
from common.messages import Ack, LogChunk, ReadLogs, RenewLogs, ServiceLogs
from scheduler.deps import Deps
from scheduler.tasks import TaskOwner

logger = logging.getLogger(__name__)

LEASE_S = 30.0
"""A followed session not renewed for this long ends (the gateway renews every few seconds)."""
BATCH_S = 0.05
"""Lines arriving within this window go out in one chunk."""
MAX_SESSIONS = 256


@dataclass
class _Session:
    id: str
    renewed: float = field(default_factory=time.monotonic)
    task: asyncio.Task[None] | None = None


class ServiceLogReader:
    def __init__(self, deps: Deps, nc: NATS) -> None:
        self.d = deps
        self._nc = nc
        self._sessions: dict[str, _Session] = {}
        self._tasks = TaskOwner()  # its own: a stopping scheduler ends follows at once, not after a grace time

    async def close(self) -> None:
        await self._tasks.shutdown(0)

    def _container(self, service_id: str) -> str:
        if self.d.catalog.get(service_id) is None and self.d.observed.get(service_id) is None:
            raise NotFoundError(Code.SERVICE_NOT_FOUND, f"service {service_id} not found")
        container = self.d.observed.state(service_id).container_id
        if container is None:
            raise NotFoundError(Code.CONTAINER_NOT_FOUND, f"service {service_id} has no container: start it first")
        return container

    async def read(self, cmd: ReadLogs) -> ServiceLogs:
        if cmd.tail is not None and cmd.tail < 0:
            raise InvalidError(Code.BAD_REQUEST, "tail must be 0 or more")
        container = self._container(cmd.service_id)
        if not cmd.follow:
            lines = await self.d.driver.logs(container, cmd.tail)
            return ServiceLogs(service_id=cmd.service_id, container_id=container, lines=lines)
        if not cmd.session:
            raise InvalidError(Code.BAD_REQUEST, "follow needs a session")
        if cmd.session in self._sessions:
            raise InvalidError(Code.BAD_REQUEST, f"log session {cmd.session} exists already")
        if len(self._sessions) >= MAX_SESSIONS:
            raise AppError(Code.STATE_CONFLICT, f"too many followed logs ({MAX_SESSIONS}); stop one first")
        session = _Session(cmd.session)
        self._sessions[session.id] = session
        session.task = self._tasks.spawn(self._follow(session, container, cmd.tail), f"logs {cmd.service_id}")
        return ServiceLogs(service_id=cmd.service_id, container_id=container)

    async def renew(self, cmd: RenewLogs) -> Ack:
        session = self._sessions.get(cmd.session)
        if session is None:
            raise NotFoundError(Code.LOGS_SESSION_NOT_FOUND, f"log session {cmd.session} has ended")
        session.renewed = time.monotonic()
        if cmd.stop and session.task is not None:
            session.task.cancel()
        return Ack()

    async def _follow(self, session: _Session, container: str, tail: int | None) -> None:
        lines: asyncio.Queue[str | None] = asyncio.Queue()
        reader = asyncio.create_task(self._read_into(container, tail, lines))
        subject = subjects.logs_subject(session.id)
        try:
            ended = False
            while not ended:
                if time.monotonic() - session.renewed > LEASE_S:
                    logger.info("log session %s expired", session.id)
                    break
                batch, ended = await _next_batch(lines, timeout=LEASE_S / 3)
                if batch:
                    await self._nc.publish(subject, codec.encode(LogChunk(session=session.id, lines=batch)))
        except asyncio.CancelledError:
            pass  # the reader said stop, or the scheduler stops: the last chunk still goes out
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            self._sessions.pop(session.id, None)
            with contextlib.suppress(Exception):  # the bus may be gone at shutdown; the reader's lease ends it
                await self._nc.publish(subject, codec.encode(LogChunk(session=session.id, end=True)))

    async def _read_into(self, container: str, tail: int | None, out: asyncio.Queue[str | None]) -> None:
        """Docker's chunks as whole lines (a chunk may end mid-line); None once the log ends."""
        partial = ""
        try:
            async for chunk in self.d.driver.follow_logs(container, tail):
                partial += chunk
                *complete, partial = partial.split("\n")
                for line in complete:
                    out.put_nowait(line.removesuffix("\r"))
        except AppError as exc:
            logger.info("log of %s ended: %s", container, exc.message)
        finally:
            if partial:
                out.put_nowait(partial)
            out.put_nowait(None)


async def _next_batch(lines: asyncio.Queue[str | None], timeout: float) -> tuple[list[str], bool]:
    """Lines that arrive within BATCH_S of the first (waiting at most ``timeout`` for it); True once ended."""
    batch: list[str] = []
    try:
        async with asyncio.timeout(timeout):
            first = await lines.get()
    except TimeoutError:
        return batch, False
    if first is None:
        return batch, True
    batch.append(first)
    deadline = time.monotonic() + BATCH_S
    while (left := deadline - time.monotonic()) > 0:
        try:
            async with asyncio.timeout(left):
                line = await lines.get()
        except TimeoutError:
            break
        if line is None:
            return batch, True
        batch.append(line)
    return batch, False
