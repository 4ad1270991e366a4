"""``premd credentials <user>``: a bus user's credentials, for other tools (reader, operator) or a deployment.

Prints the credentials as JSON (the file format PREMD_NATS_CREDENTIALS reads, plus the NATS URL), or as
``NATS_URL`` / ``NATS_USER`` / ``NATS_PASSWORD`` lines for the ``nats`` CLI; ``--output`` writes them to a new
file with mode 0600 instead. ``--server-config`` writes the nats-server ``authorization`` block for a NATS
premd does not start itself (docker compose). Credentials missing from the data directory are generated.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from common import subjects
from common.entry import load_settings
from common.nats_auth import (
    BusCredentials,
    credentials_dir,
    encode_credentials,
    ensure_credentials,
    server_config,
    write_private,
)
from common.settings import Settings


def register(sub: Any) -> None:
    """Add the ``credentials`` command to premd's sub-command parser (``sub``: ``add_subparsers()``'s result)."""
    parser: argparse.ArgumentParser = sub.add_parser(
        "credentials",
        help="print or write a bus user's NATS credentials (reader, operator, admin, or a component)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("user", nargs="?", choices=subjects.USERS, help="the bus user")
    parser.add_argument("--format", choices=("json", "env"), default="json", help="json (default) or env lines")
    parser.add_argument("--output", type=Path, help="write to this new file (mode 0600) instead of printing")
    parser.add_argument("--server-config", type=Path, help="write the nats-server authorization block here")
    parser.set_defaults(run=run)


def nats_url(settings: Settings) -> str:
    return settings.nats_url or f"nats://127.0.0.1:{settings.nats_port}"


def render(creds: BusCredentials, url: str, fmt: str) -> bytes:
    if fmt == "env":
        lines = (f"NATS_URL={url}", f"NATS_USER={creds.user}", f"NATS_PASSWORD={creds.password}")
        return ("\n".join(lines) + "\n").encode()
    body = json.loads(encode_credentials(creds))
    return (json.dumps({**body, "url": url}, indent=2) + "\n").encode()


def run(args: argparse.Namespace) -> int:
    if args.user is None and args.server_config is None:
        print("premd credentials: name a user or give --server-config", file=sys.stderr)
        return 2
    settings = load_settings()
    found = ensure_credentials(credentials_dir(settings.data_dir))
    try:
        if args.server_config is not None:
            write_private(args.server_config, server_config(found).encode())
        if args.user is not None:
            text = render(found[args.user], nats_url(settings), args.format)
            if args.output is None:
                sys.stdout.buffer.write(text)
            else:
                write_private(args.output, text)
    except FileExistsError as exc:
        print(f"premd credentials: {exc.filename} exists; not replaced", file=sys.stderr)
        return 1
    return 0
