"""Run, stop, restart and remove services, and Docker housekeeping: commands to the scheduler.

Routes that change a service answer once the gateway view shows the change (Prem App refetches right after
the answer and must see it), or with the operation's failure.
"""

from __future__ import annotations

from aiohttp import web

from common import subjects
from common.messages import (
    Ack,
    Empty,
    OperationAccepted,
    OperationEvent,
    RemoveImage,
    RemoveVolume,
    RestartService,
    ServiceState,
    ServiceStopped,
    StartService,
    StopService,
)
from gateway.apidoc import documented
from gateway.commands import (
    SERVICE_NOT_FOUND,
    OperationFailed,
    ask,
    catch_up,
    follow,
    require_service,
    watch_service,
)
from gateway.errors import ApiError, json_response, read_body
from gateway.keys import SETTINGS, VIEW
from gateway.schemas import RunServiceInput, SuccessResponse
from gateway.streams import Closed

routes = web.RouteTableDef()


def _running(state: ServiceState | None) -> bool:
    return state is not None and state.running and state.host_port is not None


def _started(event: OperationEvent) -> bool:
    """The first sign a start took: its container runs (a state event), or the service is ready."""
    return event.type == "succeeded" or (event.type == "state" and event.phase in ("starting", "ready"))


async def _start(request: web.Request, service_id: str, command: StartService | RestartService, prefix: str) -> int:
    """Send a start or restart and wait until the view shows the operation's container running; its port."""
    subject = subjects.SCHEDULER_START if isinstance(command, StartService) else subjects.SCHEDULER_RESTART
    timeout = request.app[SETTINGS].readiness_timeout_s
    async with watch_service(request, service_id) as updates:
        reply = await ask(request, subject, command, OperationAccepted, prefix)
        try:
            state = await follow(
                request,
                service_id,
                updates,
                reply.operation_id,
                event_done=_started,
                state_done=_running,
                timeout=timeout,
            )
        except OperationFailed as exc:
            raise ApiError(prefix + exc.message, code=exc.code) from None
        except Closed:
            raise ApiError(prefix + "premd is shutting down", 503) from None
        except TimeoutError:
            raise ApiError(f"{prefix}not running after {timeout:g} s", 503) from None
    assert state is not None and state.host_port is not None  # _running
    return state.host_port


@routes.post("/v1/run-service/")
@documented(
    "Start a service; answers once its container runs (the list shows it running, with its port)",
    body=RunServiceInput,
    response=SuccessResponse,
    errors={400: f"{SERVICE_NOT_FOUND} / Failed to create container for <id>: <reason>", 422: "no id"},
)
async def run_service(request: web.Request) -> web.Response:
    service_id = (await read_body(request, RunServiceInput)).id
    require_service(request, service_id)
    state = request.app[VIEW].state(service_id)
    if state is not None and _running(state):
        desired = request.app[VIEW].desired.values.get(service_id)
        if desired is not None and desired.on_demand:
            # Autostarted for a request: a user's start makes it the user's (never stopped when idle).
            prefix = f"Failed to create container for {service_id}: "
            await ask(request, subjects.SCHEDULER_START, StartService(service_id=service_id), OperationAccepted, prefix)
        return _message(f"Service already running on port {state.host_port}.")
    command = StartService(service_id=service_id)
    port = await _start(request, service_id, command, f"Failed to create container for {service_id}: ")
    return _message(f"Service started successfully. Container running on port {port}.")


@routes.get("/v1/restart-service/{service_id}")
@documented(
    "Restart a service's container; answers once it runs again",
    response=SuccessResponse,
    errors={400: f"{SERVICE_NOT_FOUND} / Failed to restart container <reason>"},
)
async def restart_service(request: web.Request) -> web.Response:
    service_id = request.match_info["service_id"]
    require_service(request, service_id)
    await _start(request, service_id, RestartService(service_id=service_id), "Failed to restart container ")
    return _message(f"Service {service_id} restarted successfully.")


@routes.get("/v1/stop-service/{service_id}")
@documented(
    "Stop a service (its volume is kept); answers once the list shows it stopped",
    response=SuccessResponse,
    errors={400: f"{SERVICE_NOT_FOUND} / Failed to stop container <reason> (e.g. not running)"},
)
async def stop_service(request: web.Request) -> web.Response:
    service_id = request.match_info["service_id"]
    require_service(request, service_id)
    command = StopService(service_id=service_id)
    await ask(request, subjects.SCHEDULER_STOP, command, ServiceStopped, "Failed to stop container ")
    await catch_up(request)
    return _message(f"Service {service_id} successfully.")  # sic: premd's text has no verb


@routes.get("/v1/stop-all-services/")
@documented(
    "Stop every running service; answers once the list shows none running",
    response=SuccessResponse,
    errors={400: "Failed to stop container <reason>"},
)
async def stop_all(request: web.Request) -> web.Response:
    await ask(request, subjects.SCHEDULER_STOP_ALL, Empty(), Ack, "Failed to stop container ")
    await catch_up(request)
    return _message("All services stopped successfully.")


@routes.get("/v1/remove-service/{service_id}")
@documented(
    "Remove the service's image; answers once the list shows the change",
    response=SuccessResponse,
    errors={400: f"{SERVICE_NOT_FOUND} / Failed to remove image <reason>"},
)
async def remove_service(request: web.Request) -> web.Response:
    service_id = request.match_info["service_id"]
    require_service(request, service_id)
    command = RemoveImage(service_id=service_id)
    reply = await ask(request, subjects.SCHEDULER_REMOVE_IMAGE, command, Ack, "Failed to remove image ")
    await catch_up(request)
    if reply.message.endswith(" not found."):  # premd: 200 "Image <dockerImage> not found." (the scheduler's text)
        return _message(reply.message)
    return _message(f"Service {service_id} removed successfully.")


@routes.get("/v1/remove-volume/{volume_name}")
@documented(
    "Remove a volume of premd's (prem-<id>-data)",
    response=SuccessResponse,
    errors={400: "Failed to remove image <reason> (sic: premd's prefix)"},
)
async def remove_volume(request: web.Request) -> web.Response:
    name = request.match_info["volume_name"]
    await ask(request, subjects.SCHEDULER_REMOVE_VOLUME, RemoveVolume(name=name), Ack, "Failed to remove image ")
    return _message(f"Volume {name} removed successfully.")


@routes.get("/v1/system-prune/")
@documented(
    "Prune premd's stopped containers and unused volumes, and dangling images",
    response=SuccessResponse,
    errors={400: "Failed to prune docker <reason>"},
)
async def system_prune(request: web.Request) -> web.Response:
    await ask(request, subjects.SCHEDULER_PRUNE, Empty(), Ack, "Failed to prune docker ")
    await catch_up(request)
    return _message("System pruned successfully.")


def _message(text: str) -> web.Response:
    return json_response(SuccessResponse(message=text))
