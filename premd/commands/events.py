"""``premd events``: follow premd's event stream (operations and catalog changes), as lines or ``--json``."""

from __future__ import annotations

import argparse
import datetime
import json
from typing import Any

from premd.client import Api
from premd.commands.base import client_parser
from premd.ui import Ui, human_bytes


def register(sub: Any) -> None:
    parser = client_parser(sub, "events", "follow premd's events (Ctrl-C ends)", run)
    parser.add_argument("--service", metavar="ID", help="only this service's events")
    parser.add_argument("--operation", metavar="OP", help="only this operation's events")
    parser.add_argument("--since", default="now", help="now (default), all (the last 7 days), or a sequence number")


def describe(kind: str, event: dict[str, Any]) -> str:
    """One line for people: ``<time> <service> <kind> <type>: <what>``."""
    at = event.get("at")
    when = datetime.datetime.fromtimestamp(at).strftime("%H:%M:%S") if isinstance(at, int | float) else "--:--:--"
    if kind == "catalog.changed":
        parts = [f"{name} {len(event.get(name) or [])}" for name in ("added", "removed", "changed")]
        return f"{when} catalog changed: {', '.join(parts)}"
    text = event.get("message") or event.get("status") or ""
    if event.get("type") == "progress" and event.get("percentage") is not None:
        total = human_bytes(event.get("bytes_total"))
        text = f"{event['percentage']:.0f}% of {total}"
    if event.get("phase"):
        text = f"{event['phase']} {text}".strip()
    return f"{when} {event.get('service_id', '-')} {event.get('kind', '-')} {event.get('type', kind)}: {text}"


def run(args: argparse.Namespace, api: Api, ui: Ui) -> int:
    params = {"since": args.since}
    if args.service:
        params["service"] = args.service
    if args.operation:
        params["operation"] = args.operation
    try:
        for sse in api.sse("/v1/events", params):
            if not sse.data:
                continue
            event = json.loads(sse.data)
            if ui.json:
                ui.emit({"sequence": int(sse.id) if sse.id else None, "event": sse.event, "data": event})
            else:
                ui.line(describe(sse.event, event))
    except KeyboardInterrupt:
        return 0
    return 0
