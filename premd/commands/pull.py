"""``premd pull <id>``: download a service's image with a live progress bar; ``--cancel`` stops a download.

The bar follows the pull's operation on the event stream (``/v1/events?operation=...&since=all``), so running
the command again while the pull goes on re-attaches where it is; Ctrl-C only detaches.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from typing import Any

from httpx_sse import ServerSentEvent
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from premd.client import Api, CliError
from premd.commands.base import INTERRUPTED, client_parser
from premd.ui import Ui, human_bytes

PLAIN_STEP = 10.0
"""Without a terminal, a progress line every this many percent."""


def register(sub: Any) -> None:
    parser = client_parser(sub, "pull", "download a service's image, with progress", run)
    parser.add_argument("service_id", metavar="ID", help="the service (see premd ls)")
    parser.add_argument("--cancel", action="store_true", help="cancel the download in progress instead")
    parser.add_argument("--force", action="store_true", help="pull even when the disk looks too full")


def run(args: argparse.Namespace, api: Api, ui: Ui) -> int:
    sid = args.service_id
    if args.cancel:
        reply = api.call("DELETE", f"/v1/pulls/{sid}")
        if ui.json:
            ui.emit(reply)
        else:
            ui.line(f"Cancelled the download of {sid}.")
        return 0
    try:
        final = pull(api, ui, sid, force=args.force)
    except KeyboardInterrupt:
        ui.note(f"Detached; the download goes on. `premd pull {sid}` follows it again, `--cancel` stops it.")
        return INTERRUPTED
    if not ui.json:
        ui.line(f"Downloaded {sid} ({human_bytes(final.get('bytes_total'))}).")
    return 0


def pull(api: Api, ui: Ui, sid: str, force: bool = False) -> dict[str, Any]:
    """Start or join the pull and follow it to its end; the ``succeeded`` event. CliError when it failed."""
    accepted = api.call("POST", f"/v1/pulls/{sid}", params={"force": "1"} if force else None)
    if accepted.get("joined") and not ui.json:
        ui.note(f"Joining the download of {sid} in progress.")
    events = api.sse("/v1/events", {"operation": accepted["operation_id"], "service": sid, "since": "all"})
    if ui.tty:
        with _bar(ui) as progress:
            task = progress.add_task(sid, total=None)
            for event in _events(events):
                if event["type"] == "succeeded":
                    total = event.get("bytes_total") or 1
                    progress.update(task, total=total, completed=total, description=sid)
                    return event
                _check(sid, event)
                if event["type"] == "progress":
                    total = event.get("bytes_total") or None
                    progress.update(task, total=total, completed=event.get("bytes_done") or 0)
    else:
        shown = -PLAIN_STEP
        for event in _events(events):
            if ui.json:
                ui.emit(event)
            if event["type"] == "succeeded":
                if not ui.json:
                    total = human_bytes(event.get("bytes_total"))
                    ui.line(f"{sid}: 100% ({total} of {total})")
                return event
            _check(sid, event)
            pct = event.get("percentage")
            if not ui.json and event["type"] == "progress" and pct is not None and pct >= shown + PLAIN_STEP:
                shown = pct - pct % PLAIN_STEP
                done, total = human_bytes(event.get("bytes_done")), human_bytes(event.get("bytes_total"))
                ui.line(f"{sid}: {pct:.0f}% ({done} of {total})")
    raise CliError(f"the event stream ended before the download of {sid} did; run `premd pull {sid}` again")


def _bar(ui: Ui) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=ui.out,
    )


def _events(events: Iterator[ServerSentEvent]) -> Iterator[dict[str, Any]]:
    for sse in events:
        if sse.data:
            event: dict[str, Any] = json.loads(sse.data)
            yield event


def _check(sid: str, event: dict[str, Any]) -> None:
    if event["type"] == "failed":
        if event.get("error_code") == "pull.cancelled":
            raise CliError(f"the download of {sid} was cancelled", "pull.cancelled")
        raise CliError(f"download of {sid} failed: {event.get('message') or 'unknown error'}", event.get("error_code"))
