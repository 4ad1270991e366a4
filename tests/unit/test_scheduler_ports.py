"""Host port choice: the manifest's port, else the next one that is free."""

from __future__ import annotations

import socket

import pytest

from common.errors import ConflictError
from scheduler.ports import PortAllocator, can_bind, choose_port


def test_preferred_port_when_free() -> None:
    assert choose_port(8000, lambda p: False) == 8000


def test_next_free_port_when_taken() -> None:
    assert choose_port(8000, lambda p: p in {8000, 8001}) == 8002


def test_none_free_is_a_conflict_naming_the_range() -> None:
    with pytest.raises(ConflictError) as err:
        choose_port(65534, lambda p: True)
    assert err.value.code == "port.unavailable" and "65534-65535" in err.value.message


def test_can_bind_sees_a_listener() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        assert not can_bind("127.0.0.1", port)


def test_allocator_skips_docker_published_and_reserved_ports() -> None:
    allocator = PortAllocator("127.0.0.1", probe=lambda host, port: port != 9003)
    first = allocator.reserve(9000, published={9000})
    assert first == 9001
    assert allocator.reserve(9000, published={9000}) == 9002  # 9001 is reserved by the first start
    assert allocator.reserve(9002, published=()) == 9004  # 9002 reserved, 9003 bound by someone
    allocator.release(first)
    assert allocator.reserve(9000, published={9000}) == 9001
