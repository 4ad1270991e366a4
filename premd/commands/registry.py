"""``premd registry ls | add <url> | rm <url>``: the registries premd's catalog is merged from."""

from __future__ import annotations

import argparse
from typing import Any

from premd.client import Api
from premd.commands.base import add_client_options, client_parser
from premd.ui import Ui


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser("registry", help="list, add or remove service registries")
    add_client_options(parser)
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    client_parser(verbs, "ls", "list the registries, in merge order", list_registries)
    client_parser(verbs, "add", "add a registry (fetched and merged before the answer)", add).add_argument(
        "registry_url", metavar="URL"
    )
    client_parser(verbs, "rm", "remove a registry", remove).add_argument("registry_url", metavar="URL")


def list_registries(args: argparse.Namespace, api: Api, ui: Ui) -> int:
    registries = api.get("/v1/registries/")
    if ui.json:
        ui.emit(registries)
    else:
        ui.table(("URL",), ((r["url"],) for r in registries))
    return 0


def add(args: argparse.Namespace, api: Api, ui: Ui) -> int:
    reply = api.call("POST", "/v1/registries/", json={"url": args.registry_url}, timeout=120)
    if ui.json:
        ui.emit(reply)
    else:
        ui.line(f"Added registry {reply['url']}.")
    return 0


def remove(args: argparse.Namespace, api: Api, ui: Ui) -> int:
    reply = api.call("DELETE", "/v1/registries/", params={"url": args.registry_url})
    if ui.json:
        ui.emit(reply)
    else:
        ui.line(str(reply["message"]))
    return 0
