"""Where the Docker engine listens, as premd resolves it (the scheduler and the builder connect there).

No aiodocker here (only scheduler/ and builder/ import it): this is the address, worked out from the
environment and the file system alone.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

DOCKER_SOCKETS = ("/run/docker.sock", "/var/run/docker.sock", "~/.docker/run/docker.sock")
"""Where an engine listens when DOCKER_HOST is unset (Linux, then Docker Desktop's per-user socket)."""
DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"
"""Used when no engine is installed: calls fail with ``docker.unavailable`` until one listens there."""
NO_CONNECTION_STATUS = 900
"""aiodocker's ``DockerError.status`` for "cannot connect to the Docker engine"."""


def docker_host(env: Mapping[str, str] | None = None, sockets: tuple[str, ...] = DOCKER_SOCKETS) -> str:
    """The engine's address: DOCKER_HOST, else the first socket that exists, else the default socket.

    Resolved here, not by aiodocker, which fails (AssertionError) when there is no engine at all: premd
    starts without one, lists services, and uses the engine once it appears at that address.
    """
    env = os.environ if env is None else env
    if host := env.get("DOCKER_HOST", "").strip():
        return host
    for path in sockets:
        full = os.path.expanduser(path)
        if os.path.exists(full):
            return f"unix://{full}"
    return DEFAULT_DOCKER_HOST
