"""``premd logs <id> [-f] [--tail N]``: a service container's log; ``-f`` follows it until Ctrl-C or it stops."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from premd.client import Api
from premd.commands.base import client_parser
from premd.ui import Ui


def register(sub: Any) -> None:
    parser = client_parser(sub, "logs", "print a service's log (stdout and stderr of its container)", run)
    parser.add_argument("service_id", metavar="ID")
    parser.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    parser.add_argument("-n", "--tail", type=int, metavar="N", help="only the last N lines")


def _print(ui: Ui, lines: list[str]) -> None:
    if ui.json:
        for line in lines:
            ui.emit({"line": line})
        return
    sys.stdout.write("".join(f"{line}\n" for line in lines))  # as the service wrote them: no markup, no colour
    sys.stdout.flush()


def run(args: argparse.Namespace, api: Api, ui: Ui) -> int:
    params = {"tail": str(args.tail)} if args.tail is not None else {}
    path = f"/v1/logs/{args.service_id}"
    if not args.follow:
        reply = api.get(path, params=params)
        if ui.json:
            ui.emit(reply)
        else:
            _print(ui, reply["lines"])
        return 0
    try:
        for sse in api.sse(path, {**params, "follow": "1"}):
            if sse.event == "log":
                _print(ui, json.loads(sse.data)["lines"])
            elif sse.event == "end":
                break
    except KeyboardInterrupt:
        return 0  # following ends with Ctrl-C, as with `docker logs -f`
    return 0
