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


def build_parser(modules: tuple[str, ...] = COMMAND_MODULES) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="premd", description="Run AI model services on this machine.")
    parser.add_argument("--version", action="version", version=f"premd {VERSION}")
    if modules != SERVE_ONLY:
        from premd.commands.base import add_client_options  # the HTTP client: what serve does not need

        add_client_options(parser, root=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in modules:
        importlib.import_module(name).register(sub)
    return parser


# --- serveproc: `premd serve` parses only its own command (issue 13) ---
SERVE_ONLY = ("premd.serve",)
"""``premd serve ...`` loads no client command (httpx and the rest): its exec to a healthy GET /v1/ is measured."""


def main(argv: list[str] | None = None) -> None:
    given = sys.argv[1:] if argv is None else argv
    args = build_parser(SERVE_ONLY if given[:1] == ["serve"] else COMMAND_MODULES).parse_args(given)
    run: Callable[[argparse.Namespace], int] = args.run
    sys.exit(run(args))
