"""Image references (premd's registry-port bug fixed) and readiness probes against local sockets."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import msgspec
import pytest

from common.manifest import Manifest
from scheduler.readiness import probe_http, probe_http_or_tcp, probe_tcp, readiness_check, wait_ready
from scheduler.state import image_status, normalize_ref, split_ref


def test_split_ref_keeps_a_registry_port() -> None:
    assert split_ref("127.0.0.1:5000/premd/x:1") == ("127.0.0.1:5000/premd/x", "1")
    assert split_ref("127.0.0.1:5000/premd/x") == ("127.0.0.1:5000/premd/x", "latest")
    assert normalize_ref("docker.io/library/redis") == "redis:latest"


def test_image_status_exact_older_and_absent() -> None:
    ref = "127.0.0.1:5000/premd/x:2"
    assert image_status(ref, ["127.0.0.1:5000/premd/x:2", "other:1"]) == (True, ref, False)
    assert image_status(ref, ["127.0.0.1:5000/premd/x:1"]) == (True, "127.0.0.1:5000/premd/x:1", True)
    # premd cut at the first ":" and took any image of the same host for this one
    assert image_status(ref, ["127.0.0.1:5000/premd/other:2"]) == (False, None, False)


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def _server(handler: Handler) -> AsyncIterator[int]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


def _answer(data: bytes) -> Handler:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(100)
        writer.write(data)
        await writer.drain()
        writer.close()

    return handle


async def _close_at_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.close()  # Docker's userland proxy with nothing behind it


async def _silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read(1)  # a database waiting for its client
    writer.close()


@pytest.mark.parametrize(
    ("reply", "ready"),
    [
        (b"HTTP/1.1 200 OK\r\n\r\n", True),
        (b"HTTP/1.0 400 Bad Request\r\n\r\n", True),
        (b"HTTP/1.1 503 Service Unavailable\r\n\r\n", False),
        (b"HTTP/1.1 404 Not Found\r\n\r\n", False),
        (b"-ERR unknown command\r\n", True),
    ],
)
async def test_http_probe(reply: bytes, ready: bool) -> None:
    async with _server(_answer(reply)) as port:
        assert await probe_http("127.0.0.1", port) is ready


@pytest.mark.parametrize(
    ("reply", "ready"),
    [
        (b"HTTP/1.1 404 Not Found\r\n\r\n", True),
        (b"HTTP/1.1 503 Service Unavailable\r\n\r\n", False),
        (b"HTTP/1.1 200 OK\r\n\r\n", True),
    ],
)
async def test_http_probe_falls_back_to_tcp_on_404(reply: bytes, ready: bool) -> None:
    """A custom service without ``GET /v1/`` is up when it answers 404 and holds a connection (defect 11)."""
    async with _server(_answer(reply)) as port:
        assert await probe_http_or_tcp("127.0.0.1", port) is ready


def test_readiness_check_from_the_manifest() -> None:
    base = {"id": "x", "name": "x", "interfaces": ["chat"]}
    assert readiness_check(msgspec.convert(base, Manifest)) == "http-or-tcp"
    assert readiness_check(msgspec.convert({**base, "readinessCheck": "http"}, Manifest)) == "http"
    assert readiness_check(msgspec.convert({**base, "readinessCheck": "tcp"}, Manifest)) == "tcp"
    assert readiness_check(msgspec.convert({**base, "skipHealthCheck": True}, Manifest)) == "tcp"
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({**base, "readinessCheck": "icmp"}, Manifest)


async def test_probes_see_through_a_proxy_that_closes_at_once() -> None:
    async with _server(_close_at_once) as port:
        assert not await probe_http("127.0.0.1", port)
        assert not await probe_tcp("127.0.0.1", port)


async def test_tcp_probe_accepts_a_silent_listener_and_refuses_nothing() -> None:
    async with _server(_silent) as port:
        assert await probe_tcp("127.0.0.1", port)
    assert not await probe_tcp("127.0.0.1", port)


async def test_wait_ready_outcomes() -> None:
    async def yes() -> bool:
        return True

    async def no() -> bool:
        return False

    assert await wait_ready(yes, no, 1.0) == "ready"
    assert await wait_ready(no, no, 1.0) == "exited"
    assert await wait_ready(no, yes, 0.2) == "timeout"


def test_tag_index_normalizes_each_tag_once_per_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    """Reconcile asks about every catalog service each pass: the local tags are indexed once (issue 9, defect 8)."""
    import scheduler.state as state

    tags = [f"registry.local:5000/premd/svc{i}:{v}" for i in range(40) for v in (1, 2)] + ["redis:7"]
    refs = [f"registry.local:5000/premd/svc{i}:2" for i in range(30)] + ["docker.io/library/redis:6", "none:1"]
    expected = [image_status(ref, tags) for ref in refs]
    calls = 0
    real = state.normalize_ref

    def counting(ref: str) -> str:
        nonlocal calls
        calls += 1
        return real(ref)

    monkeypatch.setattr(state, "normalize_ref", counting)
    index = state.TagIndex(tags)
    assert [index.status(ref) for ref in refs] == expected
    assert calls == len(tags) + len(refs)  # not len(tags) x len(refs)
    assert index.status("redis:6") == (True, "redis:7", True)
