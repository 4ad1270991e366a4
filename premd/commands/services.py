"""``premd ls | show | run | stop | restart | rm``: services, from premd's listing and the scheduler's states."""

from __future__ import annotations

import argparse
import json
from typing import Any

from premd.client import Api, CliError
from premd.commands.base import INTERRUPTED, client_parser
from premd.commands.pull import pull
from premd.ui import Ui

ACTION_TIMEOUT_S = 900.0
"""run/restart answer once the container runs; the daemon's own deadline (readiness, 600 s) is shorter."""


def register(sub: Any) -> None:
    ls = client_parser(sub, "ls", "list services: id, interfaces, state, port, GPU, memory", list_services)
    ls.add_argument("-i", "--interface", help="only services with this interface (e.g. chat)")
    ls.add_argument("-s", "--state", help="only services in this state (ready, downloaded, available, ...)")
    show = client_parser(sub, "show", "everything about one service", show_service)
    show.add_argument("service_id", metavar="ID")
    run = client_parser(sub, "run", "start a service (downloading it first) and wait until it is ready", run_service)
    run.add_argument("service_id", metavar="ID")
    for name, help, fn in (
        ("stop", "stop a service (its data volume is kept)", stop_service),
        ("restart", "restart a service and wait until it is ready", restart_service),
        ("rm", "remove a service's image (stop it first)", remove_service),
    ):
        client_parser(sub, name, help, fn).add_argument("service_id", metavar="ID")


def state_of(service: dict[str, Any], state: dict[str, Any] | None) -> str:
    """One word: the scheduler's phase while something happens, else downloaded / available / unsupported."""
    phase = (state or {}).get("phase", "stopped")
    if phase != "stopped":
        return str(phase)
    if service.get("downloaded"):
        return "downloaded"
    return "available" if service.get("supported") else "unsupported"


def _states(api: Api) -> dict[str, dict[str, Any]]:
    return {s["service_id"]: s for s in api.get("/v1/states/")}


def _memory(service: dict[str, Any]) -> str | None:
    mib = (service.get("modelInfo") or {}).get("memoryRequirements")
    return f"{mib / 1024:.1f} GiB" if isinstance(mib, int | float) else None


def _gpus(state: dict[str, Any] | None) -> str | None:
    gpus = (state or {}).get("gpus") or []
    return ",".join(str(g["index"]) for g in gpus) or None


def list_services(args: argparse.Namespace, api: Api, ui: Ui) -> int:
    services = api.get("/v1/services/")
    states = _states(api)
    rows = []
    for svc in services:
        state = state_of(svc, states.get(svc["id"]))
        if args.interface and args.interface not in svc.get("interfaces", []):
            continue
        if args.state and state != args.state:
            continue
        rows.append((svc, state))
    if ui.json:
        ui.emit([{**svc, "state": state, "observed": states.get(svc["id"])} for svc, state in rows])
        return 0
    ui.table(
        ("ID", "INTERFACES", "STATE", "PORT", "GPU", "MEMORY"),
        (
            (
                svc["id"],
                ",".join(svc.get("interfaces", [])),
                state,
                svc.get("runningPort"),
                _gpus(states.get(svc["id"])),
                _memory(svc),
            )
            for svc, state in rows
        ),
    )
    return 0


def _service(api: Api, sid: str) -> dict[str, Any]:
    try:
        found: dict[str, Any] = api.get(f"/v1/services/{sid}")
    except CliError as exc:
        if exc.code == "service.not_found":
            raise CliError(f"no service {sid} (see `premd ls`)", exc.code) from None
        raise
    return found


def show_service(args: argparse.Namespace, api: Api, ui: Ui) -> int:
    svc = _service(api, args.service_id)
    state = _states(api).get(svc["id"])
    if ui.json:
        ui.emit({**svc, "state": state_of(svc, state), "observed": state})
        return 0
    ui.fields(
        (
            ("id", svc["id"]),
            ("name", svc.get("name")),
            ("state", state_of(svc, state)),
            ("interfaces", ", ".join(svc.get("interfaces", []))),
            ("image", svc.get("dockerImage")),
            ("downloaded", "yes" if svc.get("downloaded") else "no"),
            ("needs update", "yes" if svc.get("needsUpdate") else "no"),
            ("port", svc.get("runningPort")),
            ("url", svc.get("baseUrl")),
            ("gpu", _gpus(state)),
            ("memory", _memory(svc)),
            ("restarts", (state or {}).get("restarts")),
            ("last error", (state or {}).get("last_error")),
            ("description", svc.get("description")),
        )
    )
    return 0


def wait_ready(api: Api, ui: Ui, sid: str) -> dict[str, Any]:
    """Until the service answers its health check (the start operation's ``succeeded``); its observed state."""
    state = _states(api).get(sid) or {}
    if state.get("ready"):
        return state
    op = state.get("operation_id")
    if not op:
        raise CliError(f"{sid} is not starting (state {state.get('phase', 'stopped')}); see `premd logs {sid}`")
    status = ui.out.status(f"Waiting for {sid} to be ready...") if ui.tty else None
    try:
        if status is not None:
            status.start()
        for sse in api.sse("/v1/events", {"operation": op, "service": sid, "since": "all"}):
            event = json.loads(sse.data) if sse.data else {}
            if event.get("type") == "succeeded":
                return _states(api).get(sid) or state
            if event.get("type") == "failed":
                reason = event.get("message") or "unknown error"
                raise CliError(f"{sid} did not start: {reason} (see `premd logs {sid}`)", event.get("error_code"))
    finally:
        if status is not None:
            status.stop()
    raise CliError(f"the event stream ended before {sid} was ready; `premd show {sid}` tells where it is")


def _ready_report(api: Api, ui: Ui, sid: str, state: dict[str, Any]) -> None:
    svc = _service(api, sid)
    base = svc.get("baseUrl") or f"{api.target.url}/proxy/{sid}"
    if ui.json:
        ui.emit(
            {
                "id": sid,
                "ready": True,
                "port": state.get("host_port"),
                "url": base,
                "openai_base_url": f"{api.target.url}/v1",
            }
        )
        return
    ui.line(f"{sid} is ready.")
    ui.fields(
        (("url", base), ("OpenAI base URL", f"{api.target.url}/v1  (model: {sid})"), ("port", state.get("host_port")))
    )


def run_service(args: argparse.Namespace, api: Api, ui: Ui) -> int:
    sid = args.service_id
    svc = _service(api, sid)
    if not svc.get("supported"):
        raise CliError(f"{sid} cannot run on this machine (see `premd show {sid}`)", "service.unsupported")
    try:
        if not svc.get("downloaded"):
            pull(api, ui, sid)
        api.call("POST", "/v1/run-service/", json={"id": sid}, timeout=ACTION_TIMEOUT_S)
        state = wait_ready(api, ui, sid)
    except KeyboardInterrupt:
        ui.note(f"Detached; {sid} goes on starting (`premd show {sid}`; `premd stop {sid}` stops it).")
        return INTERRUPTED
    _ready_report(api, ui, sid, state)
    return 0


def restart_service(args: argparse.Namespace, api: Api, ui: Ui) -> int:
    sid = args.service_id
    api.get(f"/v1/restart-service/{sid}", timeout=ACTION_TIMEOUT_S)
    try:
        state = wait_ready(api, ui, sid)
    except KeyboardInterrupt:
        return INTERRUPTED
    _ready_report(api, ui, sid, state)
    return 0


def _simple(api: Api, ui: Ui, path: str) -> int:
    reply = api.get(path, timeout=ACTION_TIMEOUT_S)
    if ui.json:
        ui.emit(reply)
    else:
        ui.line(str(reply.get("message", "")))
    return 0


def stop_service(args: argparse.Namespace, api: Api, ui: Ui) -> int:
    return _simple(api, ui, f"/v1/stop-service/{args.service_id}")


def remove_service(args: argparse.Namespace, api: Api, ui: Ui) -> int:
    return _simple(api, ui, f"/v1/remove-service/{args.service_id}")
