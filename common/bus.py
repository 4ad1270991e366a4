"""The bus: connecting, typed requests with named timeouts, and micro service endpoints.

Errors cross the bus as micro service errors (headers Nats-Service-Error-Code / Nats-Service-Error)
and come back out of request() as the typed AppError for their code.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec
import nats
import nats.errors
from nats.aio.client import Client as NATS
from nats.micro import add_service
from nats.micro.request import Request
from nats.micro.service import Service

from common import codec
from common.errors import AppError, Code, error_for
from common.messages import ErrorReply
from common.nats_auth import BusCredentials

logger = logging.getLogger(__name__)

Req = TypeVar("Req", bound=msgspec.Struct)
Rep = TypeVar("Rep", bound=msgspec.Struct)

ERROR_CODE_HEADER = "Nats-Service-Error-Code"
ERROR_HEADER = "Nats-Service-Error"


async def connect(url: str, name: str, credentials: BusCredentials | None = None) -> NATS:
    """Connect with endless reconnects: a restarted nats-server must not take a component down.

    With ``credentials``: as that bus user, with its own inbox prefix (the only one it may subscribe to).
    """

    made: list[NATS] = []  # the client, once connected (the callbacks need it)

    async def _error(exc: Exception) -> None:
        logger.warning("nats (%s): %s", name, exc)

    async def _disconnected() -> None:
        if made and made[0].is_closed:  # our own close (a stop), not a lost server: nothing to warn about
            logger.debug("nats (%s): closed", name)
        else:
            logger.warning("nats (%s): disconnected", name)

    async def _reconnected() -> None:
        logger.info("nats (%s): reconnected", name)

    client = await nats.connect(
        url,
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        connect_timeout=5,
        allow_reconnect=True,
        error_cb=_error,
        disconnected_cb=_disconnected,
        reconnected_cb=_reconnected,
        **_auth(credentials),
    )
    made.append(client)
    return client


def require_connected(nc: NATS, subject: str) -> None:
    """Fail at once while the connection is down: a request sent now would only be buffered until its timeout."""
    if not nc.is_connected:
        raise error_for(Code.BUS_DISCONNECTED, f"the bus is disconnected (reconnecting): {subject} not sent")


def _auth(credentials: BusCredentials | None) -> dict[str, Any]:
    if credentials is None:
        return {}
    auth: dict[str, Any] = {"user": credentials.user, "password": credentials.password}
    if credentials.inbox_prefix:
        auth["inbox_prefix"] = credentials.inbox_prefix
    return auth


async def request(nc: NATS, subject: str, msg: msgspec.Struct, reply: type[Rep], timeout: float) -> Rep:
    """Send a command and decode its reply; error replies raise the AppError of their code."""
    require_connected(nc, subject)
    try:
        resp = await nc.request(subject, codec.encode(msg), timeout=timeout)
    except nats.errors.NoRespondersError:
        raise error_for(Code.BUS_UNAVAILABLE, f"nothing answers {subject}") from None
    except nats.errors.TimeoutError:
        raise error_for(Code.BUS_TIMEOUT, f"no reply on {subject} within {timeout:g} s") from None
    headers = resp.headers or {}
    if code := headers.get(ERROR_CODE_HEADER):
        message = headers.get(ERROR_HEADER, "")
        if resp.data:
            try:
                message = codec.decode(resp.data, ErrorReply).message
            except msgspec.DecodeError:
                pass
        raise error_for(code, message)
    try:
        return codec.decode(resp.data, reply)
    except msgspec.DecodeError as exc:
        raise error_for(Code.INTERNAL, f"malformed reply on {subject}: {exc}") from None


async def gather(
    nc: NATS, subject: str, reply: type[Rep], window_s: float, enough: Callable[[list[Rep]], bool] | None = None
) -> list[Rep]:
    """Every answer to a broadcast ($SRV.PING, $SRV.STATS) within ``window_s``, or until ``enough`` says so.

    Answers that do not decode as ``reply`` are not ours to count and are left out.
    """
    answers: list[Rep] = []
    if not nc.is_connected:
        return answers
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    try:
        await nc.publish(subject, b"", reply=inbox)
        async with asyncio.timeout(window_s):
            async for msg in sub.messages:
                try:
                    answers.append(codec.decode(msg.data, reply))
                except (msgspec.DecodeError, msgspec.ValidationError):
                    continue
                if enough is not None and enough(answers):
                    break
    except TimeoutError:
        pass
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
    return answers


Handler = Callable[[Any], Awaitable[msgspec.Struct]]


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One request/reply endpoint: the subject, the request type, and the coroutine answering it."""

    name: str
    subject: str
    request_type: type[msgspec.Struct]
    handler: Handler
    concurrency: int = 1
    """How many requests the endpoint answers at once (slow handlers: Docker stats sample for a second or two)."""


def endpoint(
    name: str,
    subject: str,
    request_type: type[Req],
    handler: Callable[[Req], Awaitable[Rep]],
    *,
    concurrency: int = 1,
) -> Endpoint:
    """Typed constructor: checks that the handler takes what the endpoint decodes."""
    return Endpoint(name, subject, request_type, handler, max(1, concurrency))


async def respond_error(req: Request, code: str, message: str) -> None:
    body = codec.encode(ErrorReply(code=code, message=message))
    # Header values must be single-line.
    await req.respond_error(code, message.replace("\r", " ").replace("\n", " ")[:512], data=body)


class InFlight:
    """Requests being answered, so that a stopping component can let them finish.

    Stopping a micro service unsubscribes its endpoints, which cancels the handler running in each
    subscription's task. Handlers served with an InFlight run in tasks of their own (awaited, so requests on
    one endpoint are answered one at a time unless it has a ``concurrency``): intake stops, and ``finish``
    then waits for them.
    """

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self._tasks)

    async def run(self, work: Coroutine[Any, Any, None]) -> None:
        await asyncio.shield(self.spawn(work))  # a cancelled subscription task leaves the answer running

    def spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def finish(self, timeout: float) -> int:
        """Wait up to ``timeout`` for the requests being answered, cancel the rest; returns how many were cancelled."""
        if not self._tasks:
            return 0
        _, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        return len(pending)


def _wrap(ep: Endpoint, inflight: InFlight | None) -> Callable[[Request], Awaitable[None]]:
    async def answer(req: Request) -> None:
        try:
            command = codec.decode(req.data or b"{}", ep.request_type)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            await respond_error(req, Code.BAD_REQUEST, f"invalid {ep.request_type.__name__}: {exc}")
            return
        try:
            result = await ep.handler(command)
        except asyncio.CancelledError:  # stopping: say so now rather than leave the caller to its timeout
            with contextlib.suppress(Exception):
                await respond_error(req, Code.BUS_UNAVAILABLE, f"{ep.subject}: stopped before answering")
            raise
        except AppError as exc:
            await respond_error(req, exc.code, exc.message)
            return
        except Exception:  # boundary: one bad command must not kill the endpoint
            logger.exception("endpoint %s failed", ep.subject)
            await respond_error(req, Code.INTERNAL, "internal error (see the component's log)")
            return
        await req.respond(codec.encode(result))

    if ep.concurrency > 1:
        return _concurrent(answer, ep.concurrency, inflight or InFlight())
    if inflight is None:
        return answer

    async def handle(req: Request) -> None:
        await inflight.run(answer(req))

    return handle


def _concurrent(
    answer: Callable[[Request], Coroutine[Any, Any, None]], bound: int, inflight: InFlight
) -> Callable[[Request], Awaitable[None]]:
    """Answer in tasks of their own, at most ``bound`` at once; beyond it intake waits (backpressure)."""
    slots = asyncio.Semaphore(bound)

    async def answer_then_release(req: Request) -> None:
        try:
            await answer(req)
        finally:
            slots.release()

    async def handle(req: Request) -> None:
        await slots.acquire()
        _ = inflight.spawn(answer_then_release(req))  # tracked by InFlight (finish waits for it)

    return handle


async def serve(
    nc: NATS,
    name: str,
    version: str,
    description: str,
    endpoints: Sequence[Endpoint],
    inflight: InFlight | None = None,
) -> Service:
    """Register a NATS micro service (discoverable with $SRV.PING / $SRV.INFO) with its endpoints.

    With ``inflight``, stopping the service leaves requests being answered running (see InFlight).
    """
    svc = await add_service(nc, name=name, version=version, description=description, queue_group=name)
    for ep in endpoints:
        await svc.add_endpoint(name=ep.name, subject=ep.subject, handler=_wrap(ep, inflight))
    # The server must know our subscriptions before anyone is told we are up (else: "no responders").
    await nc.flush()
    return svc
