"""Bus credentials: one user per component and tool role, generated on first start, kept with mode 0600.

``<data_dir>/credentials/<user>.json`` holds ``{"user", "password", "inbox_prefix"}`` (the format
``premd credentials`` prints and PREMD_NATS_CREDENTIALS names). The embedded nats-server's configuration gets
every user with the permissions common/bus_permissions.py derives; no user means no connection (anonymous
clients are refused). Passwords never reach a log line: the class's repr leaves them out.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from common import codec, subjects
from common.bus_permissions import derive, inbox_prefix
from common.errors import SettingsError
from common.settings import Settings

CREDENTIALS_DIR = "credentials"
_PASSWORD_BYTES = 32


@dataclass(frozen=True, slots=True)
class BusCredentials:
    user: str
    password: str = field(repr=False)
    inbox_prefix: str


def credentials_dir(data_dir: str | Path) -> Path:
    return Path(data_dir) / CREDENTIALS_DIR


def credentials_path(directory: str | Path, user: str) -> Path:
    return Path(directory) / f"{user}.json"


def write_private(path: Path, data: bytes) -> None:
    """Create ``path`` readable by its owner only (mode 0600 from the first byte; never replaced)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def read_credentials(path: str | Path) -> BusCredentials:
    """One credentials file; SettingsError (naming PREMD_NATS_CREDENTIALS) when unreadable or malformed."""
    try:
        raw = codec.decode(Path(path).read_bytes(), dict[str, str])
        return BusCredentials(user=raw["user"], password=raw["password"], inbox_prefix=raw.get("inbox_prefix", ""))
    except (OSError, msgspec.DecodeError, msgspec.ValidationError, KeyError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else f"not a premd credentials file ({exc})"
        raise SettingsError("PREMD_NATS_CREDENTIALS", f"{path}: {reason}") from None


def encode_credentials(creds: BusCredentials) -> bytes:
    body = {"user": creds.user, "password": creds.password, "inbox_prefix": creds.inbox_prefix}
    return json.dumps(body, indent=2).encode() + b"\n"


def ensure_credentials(directory: str | Path) -> dict[str, BusCredentials]:
    """Every bus user's credentials in ``directory`` (mode 0700), generating those missing. Idempotent."""
    directory = Path(directory)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    found: dict[str, BusCredentials] = {}
    for user in subjects.USERS:
        path = credentials_path(directory, user)
        if not path.exists():
            creds = BusCredentials(user, secrets.token_urlsafe(_PASSWORD_BYTES), inbox_prefix(user))
            with contextlib.suppress(FileExistsError):  # another process wrote it first: use theirs
                write_private(path, encode_credentials(creds))
        found[user] = read_credentials(path)
    return found


def client_credentials(settings: Settings, user: str) -> BusCredentials | None:
    """The credentials ``user`` connects with: PREMD_NATS_CREDENTIALS (a file, or a directory of
    ``<user>.json``), else the data directory's own when present, else none (the NATS URL's own)."""
    if settings.nats_credentials:
        given = Path(settings.nats_credentials)
        return read_credentials(credentials_path(given, user) if given.is_dir() else given)
    local = credentials_path(credentials_dir(settings.data_dir), user)
    return read_credentials(local) if local.exists() else None


def server_config(creds: Mapping[str, BusCredentials]) -> str:
    """The nats-server ``authorization`` block: every user, each with its derived permissions."""
    users = []
    for user, p in derive().items():
        entry: dict[str, object] = {"user": user, "password": creds[user].password}
        if not p.unrestricted:
            entry["permissions"] = {
                "publish": {"allow": sorted(p.publish)},
                "subscribe": {"allow": sorted(p.subscribe)},
                **({"allow_responses": True} if p.allow_responses else {}),
            }
        users.append(entry)
    # nats-server reads JSON; strings are quoted, so "$JS..." is never taken for a variable.
    return "authorization " + json.dumps({"users": users}, indent=1) + "\n"
