"""Host port choice: the manifest's port, else the next free one, decided before the container exists.

premd created the container and retried ``port + 1`` on *any* error, up to 10 times. Here a port is
taken when Docker already publishes it (any container, even a stopped start in flight), when this
process reserved it for a start in progress, or when binding it on the service host fails.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterable

from common.errors import Code, ConflictError

SEARCH_SPAN = 100
"""How many ports after the preferred one are tried."""


def choose_port(preferred: int, taken: Callable[[int], bool], span: int = SEARCH_SPAN) -> int:
    """The first port from ``preferred`` on that is not taken. Raises ConflictError(port.unavailable)."""
    last = min(preferred + span - 1, 65535)
    for port in range(preferred, last + 1):
        if not taken(port):
            return port
    raise ConflictError(Code.PORT_UNAVAILABLE, f"ports {preferred}-{last} are all taken")


def can_bind(host: str, port: int) -> bool:
    """True when nothing listens on host:port now (a TIME_WAIT socket counts as free, like Docker sees it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


class PortAllocator:
    """Reserves host ports for starts in progress so two concurrent starts never pick the same one."""

    def __init__(self, host: str, probe: Callable[[str, int], bool] = can_bind) -> None:
        self.host = host
        self._probe = probe
        self._reserved: set[int] = set()

    def reserve(self, preferred: int, published: Iterable[int]) -> int:
        docker_taken = set(published)

        def taken(port: int) -> bool:
            return port in self._reserved or port in docker_taken or not self._probe(self.host, port)

        port = choose_port(preferred, taken)
        self._reserved.add(port)
        return port

    def release(self, port: int | None) -> None:
        if port is not None:
            self._reserved.discard(port)
