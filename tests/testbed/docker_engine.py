"""Is a Docker engine reachable, and what should a test do when it is not."""

from __future__ import annotations

import http.client
import os
import socket
from pathlib import Path
from urllib.parse import urlsplit

INSTALL_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "install-system-deps.sh"
DEFAULT_SOCKET = "/var/run/docker.sock"


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def docker_unreachable_reason(timeout: float = 3.0) -> str | None:
    """``None`` when ``GET /_ping`` on the engine (``$DOCKER_HOST`` or the default socket) answers OK."""
    host = os.environ.get("DOCKER_HOST", f"unix://{DEFAULT_SOCKET}")
    split = urlsplit(host)
    conn: http.client.HTTPConnection
    if split.scheme == "unix":
        conn = _UnixHTTPConnection(split.path, timeout)
    elif split.scheme in ("tcp", "http"):
        conn = http.client.HTTPConnection(split.hostname or "127.0.0.1", split.port or 2375, timeout=timeout)
    else:
        return f"unsupported DOCKER_HOST {host!r}"
    try:
        conn.request("GET", "/_ping")
        resp = conn.getresponse()
        body = resp.read()
    except OSError as exc:
        return f"no Docker engine at {host}: {exc}"
    finally:
        conn.close()
    if resp.status != 200:
        return f"Docker engine at {host} answered /_ping with {resp.status}: {body[:200]!r}"
    return None


def docker_required() -> bool:
    """True when a missing engine must fail tests instead of skipping them (CI or PREMD_REQUIRE_DOCKER)."""
    ci = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")
    required = os.environ.get("PREMD_REQUIRE_DOCKER", "").strip().lower() in ("1", "true", "yes")
    return ci or required


def unavailable_message(reason: str) -> str:
    return f"{reason}. Run `sudo {INSTALL_SCRIPT}` to install and start Docker (docker.io), then re-run the tests."
