"""``premd``: the console command. ``premd serve`` runs premd; the other commands drive a running one over HTTP.

Each command lives in a module of its own that has ``register(sub)``: it adds its parser(s) to ``sub`` (the
root parser's ``add_subparsers()``) and sets ``run`` (``args -> exit code``) with ``set_defaults``. A new command
is one module plus one line in ``COMMAND_MODULES``. Modules keep heavy imports inside ``run`` so that every
command starts quickly.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable

from common.version import VERSION
from premd.commands.base import add_client_options

COMMAND_MODULES: tuple[str, ...] = (
    "premd.serve",
    # --- cli: the client commands (issue 12) ---
    "premd.commands.system",
    "premd.commands.services",
    "premd.commands.pull",
    "premd.commands.logs",
    "premd.commands.registry",
    "premd.commands.events",
    "premd.commands.packages",
    "premd.commands.completion",
    # --- security: bus credentials for other tools (issue 10) ---
    "premd.credentials",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="premd", description="Run AI model services on this machine.")
    parser.add_argument("--version", action="version", version=f"premd {VERSION}")
    add_client_options(parser, root=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    run: Callable[[argparse.Namespace], int] = args.run
    sys.exit(run(args))
