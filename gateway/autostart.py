"""Which service an OpenAI request goes to, starting it first when autostart is on.

Refusals are ApiErrors the OpenAI routes render in OpenAI's error shape:

- no such model: 404 ``model_not_found``, pointing at ``GET /v1/models``;
- in the catalog but not downloaded: 404 ``model_not_downloaded``, saying how to download it;
- downloading: 503 with ``Retry-After``;
- stopped and autostart off: 409 ``service.not_running``;
- autostart on: the scheduler is asked to start it (``on_demand``: the idle stop may stop it again) and
  the request is held until it is ready, for at most ``PREMD_AUTOSTART_WAIT_S``; then 503
  ``service.not_ready`` with ``Retry-After`` (the start goes on: a retry finds it ready or still starting).
  A start that fails while the request waits answers 409 ``service.start_failed`` with the reason.
"""

from __future__ import annotations

import time

from aiohttp import web

from common import bus, subjects
from common.errors import AppError, Code, ConflictError, FitError, InvalidError, NotFoundError, UnavailableError
from common.messages import OperationAccepted, ServiceState, StartService
from gateway.errors import ApiError
from gateway.idle import STOPPER
from gateway.keys import NC, SETTINGS, VIEW
from gateway.routes import proxy

SHOWN_ID_MAX = 128


def shown(model: str) -> str:
    """A model id as quoted in a message (a client may send anything as ``model``)."""
    return repr(model if len(model) <= SHOWN_ID_MAX else model[:SHOWN_ID_MAX] + "...")


def not_found(model: str) -> ApiError:
    return ApiError(
        f"The model {shown(model)} does not exist: GET /v1/models lists the models.", 404, Code.MODEL_NOT_FOUND
    )


def not_downloaded(model: str) -> ApiError:
    return ApiError(
        f"The model {shown(model)} is not downloaded. Download it first (Prem App, or "
        f"GET /v1/download-service/{model} on premd), then send the request again.",
        404,
        Code.MODEL_NOT_DOWNLOADED,
    )


def is_downloaded(state: ServiceState | None) -> bool:
    return state is not None and (state.downloaded or state.running)


def check_present(app: web.Application, model: str) -> None:
    """404 unless the model names a service that is in the catalog (or runs) and is downloaded."""
    view = app[VIEW]
    state = view.state(model)
    if view.catalog.get(model) is None and state is None:
        raise not_found(model)
    if state is not None and state.phase == "pulling":
        raise ApiError(
            f"The model {shown(model)} is being downloaded: send the request again once the download is done.",
            503,
            Code.SERVICE_NOT_READY,
            {"Retry-After": proxy.RETRY_AFTER_S},
        )
    if not is_downloaded(state):
        raise not_downloaded(model)


def _status_of(exc: AppError) -> int:
    for kind, status in ((NotFoundError, 404), (InvalidError, 400), (ConflictError, 409), (FitError, 409)):
        if isinstance(exc, kind):
            return status
    return 503 if isinstance(exc, UnavailableError) else 500


async def _ask_start(app: web.Application, service_id: str) -> str:
    settings = app[SETTINGS]
    try:
        accepted = await bus.request(
            app[NC],
            subjects.SCHEDULER_START,
            StartService(service_id=service_id, on_demand=True),
            OperationAccepted,
            timeout=settings.request_timeout_s,
        )
    except AppError as exc:
        status = _status_of(exc)
        if exc.code == Code.IMAGE_NOT_DOWNLOADED:
            raise not_downloaded(service_id) from None
        message = exc.message if status < 500 else "the service could not be started"
        raise ApiError(message, status, exc.code) from None
    return accepted.operation_id


async def start_and_wait(app: web.Application, service_id: str) -> None:
    """Ask the scheduler to start the service, then hold until it is ready, failed, or the wait is over."""
    settings, view = app[SETTINGS], app[VIEW]
    current = view.state(service_id)
    operation_id = current.operation_id if current is not None and current.phase == "starting" else None
    asked_at = time.time()
    if operation_id is None:
        operation_id = await _ask_start(app, service_id)

    def settled(values: dict[str, ServiceState]) -> bool:
        state = values.get(service_id)
        if state is None:
            return False
        if state.phase == "ready" and state.host_port:
            return True
        ours = state.operation_id == operation_id or state.updated_at >= asked_at
        return ours and state.phase in ("failed", "crashloop", "stopped")

    wait_s = settings.autostart_wait_s
    try:
        await view.observed.wait_for(settled, timeout=wait_s)
    except TimeoutError:
        raise ApiError(
            f"The model {shown(service_id)} is still starting after {wait_s:g} s (PREMD_AUTOSTART_WAIT_S); "
            f"it goes on starting: retry after {proxy.RETRY_AFTER_S} s.",
            503,
            Code.SERVICE_NOT_READY,
            {"Retry-After": proxy.RETRY_AFTER_S},
        ) from None
    state = view.state(service_id)
    if state is not None and state.phase != "ready":
        reason = state.last_error or state.phase
        raise ApiError(f"The model {shown(service_id)} could not be started: {reason}", 409, Code.SERVICE_START_FAILED)


async def target_of(app: web.Application, model: str) -> str:
    """``host:port`` to send a request for ``model`` to, starting the service first when autostart is on."""
    settings = app[SETTINGS]
    # A request arriving while its service is being stopped for idleness waits for that stop, then starts it.
    await app[STOPPER].settled(model, settings.autostart_wait_s)
    check_present(app, model)
    try:
        return proxy.resolve(app, model)
    except ApiError as exc:
        if not settings.autostart or exc.status not in (409, 503):
            raise
    await start_and_wait(app, model)
    return proxy.resolve(app, model)
