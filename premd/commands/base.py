"""What every client command shares: ``--url``/``--token``/``--json`` and the run wrapper (errors, Ctrl-C)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from premd.client import Api, CliError, resolve
from premd.ui import Ui

Command = Callable[[argparse.Namespace, Api, Ui], int]

INTERRUPTED = 130
"""Exit code after Ctrl-C (128 + SIGINT), as shells report it."""


def add_client_options(parser: argparse.ArgumentParser, *, root: bool = False) -> None:
    """The options every client command takes, before or after its name (``premd --json ls`` = ``premd ls --json``).

    Only the root parser sets defaults: a sub-parser's default would overwrite what was given before its name.
    """
    default: Any = None if root else argparse.SUPPRESS
    group = parser.add_argument_group("connection and output")
    group.add_argument("--url", default=default, help="premd's address (env PREMD_URL; default the local one)")
    group.add_argument("--token", default=default, help="premd's API token (env PREMD_TOKEN)")
    group.add_argument(
        "--json", action="store_true", default=False if root else argparse.SUPPRESS, help="print JSON for scripts"
    )


def client_parser(sub: Any, name: str, help: str, command: Command, **kwargs: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(name, help=help, description=help, **kwargs)
    add_client_options(parser)
    parser.set_defaults(run=lambda args: run_client(command, args))
    return parser


def run_client(command: Command, args: argparse.Namespace) -> int:
    ui = Ui(bool(getattr(args, "json", False)))
    try:
        with Api(resolve(getattr(args, "url", None), getattr(args, "token", None))) as api:
            return command(args, api, ui)
    except CliError as exc:
        ui.error(exc.message, exc.code)
        return 1
    except KeyboardInterrupt:
        return INTERRUPTED
