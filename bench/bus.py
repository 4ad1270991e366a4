"""The bus and the event streams: a command's round trip over NATS, and the gateway's memory under SSE clients.

- Round trip: ``common.bus.request`` to a ``common.bus.serve`` endpoint (typed encode and decode, the micro
  service's queue group, the in-flight tracking every component uses) against a bare nats-py request to a
  bare subscription answering the same bytes, both served by one child process on one embedded nats-server,
  interleaved.
- SSE memory: the gateway (its own process, as ``premd serve`` runs it) with 200 clients on ``/v1/events``;
  its RSS idle, with the clients connected, after each of two batches of events delivered to every client,
  and after they left. "Bounded": the second batch adds (about) nothing to what the first left.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
import uuid
from pathlib import Path

import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from bench.core import Figure, Progress, free_port, spawn, stop_all, wait_ok
from bench.serve import rss_bytes
from common import bus, codec, subjects
from common.embedded_nats import EmbeddedNats
from common.jetstream import ensure_resources
from common.messages import OperationAccepted, OperationEvent, StartService

SSE_CLIENTS = 200
RAW_SUBJECT = subjects.SCHEDULER_STOP
"""The bare subscription's subject: a real one, answered only by this bench (no scheduler on its NATS)."""
REPLY = codec.encode(OperationAccepted(operation_id="op-bench", service_id="bench", kind="start"))


# ---------------------------------------------------------------- the child: both responders


async def serve_responders(nats_url: str) -> None:
    nc = await nats.connect(nats_url)

    async def start(req: StartService) -> OperationAccepted:
        return OperationAccepted(operation_id="op-bench", service_id=req.service_id, kind="start")

    async def raw(msg: Msg) -> None:
        await msg.respond(REPLY)

    await nc.subscribe(RAW_SUBJECT, cb=raw)
    await bus.serve(
        nc, "bench", "0.0.1", "bench responder", [bus.endpoint("start", subjects.SCHEDULER_START, StartService, start)]
    )
    await asyncio.Event().wait()


# ---------------------------------------------------------------- the suite


def _fig(figures: dict[str, Figure], key: str, title: str, **kw: object) -> Figure:
    if key not in figures:
        figures[key] = Figure(key, title, **kw)  # type: ignore[arg-type]
    return figures[key]


async def run(figures: dict[str, Figure], progress: Progress, quick: bool, reps: int) -> None:
    with tempfile.TemporaryDirectory(prefix="premd-bench-bus-") as tmp:
        server = EmbeddedNats(str(Path(tmp) / "nats"), port=0)
        nats_url = await server.start()
        try:
            nc = await nats.connect(nats_url)
            await ensure_resources(nc.jetstream())
            await _round_trip(figures, progress, nc, nats_url, quick, reps)
            await _sse_memory(figures, progress, nc, nats_url, quick, reps)
            await nc.close()
        finally:
            await server.stop()


async def _round_trip(
    figures: dict[str, Figure], progress: Progress, nc: NATS, nats_url: str, quick: bool, reps: int
) -> None:
    child = await spawn("-m", "bench.bus", "--responders", nats_url)
    try:
        command = StartService(service_id="bench")
        deadline = time.monotonic() + 30
        while True:  # until the child's endpoints answer
            try:
                await bus.request(nc, subjects.SCHEDULER_START, command, OperationAccepted, 1.0)
                await nc.request(RAW_SUBJECT, b"{}", timeout=1.0)
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)  # poll interval
        total, block = (300, 50) if quick else (2000, 100)
        for rep in range(reps):
            progress.step(f"bus round trip, repetition {rep + 1}/{reps}")
            premd: list[float] = []
            bare: list[float] = []
            for _ in range(total // block):
                for _ in range(block):
                    t0 = time.perf_counter()
                    await bus.request(nc, subjects.SCHEDULER_START, command, OperationAccepted, 5.0)
                    premd.append(time.perf_counter() - t0)
                for _ in range(block):
                    t0 = time.perf_counter()
                    await nc.request(RAW_SUBJECT, b'{"service_id":"bench"}', timeout=5.0)
                    bare.append(time.perf_counter() - t0)
            _fig(figures, "bus.bare", "bus round trip: bare nats-py request to a bare subscription").add_run(bare)
            _fig(
                figures,
                "bus.premd",
                "bus round trip: common.bus request to a common.bus endpoint (StartService)",
                baseline="bus.bare",
            ).add_run(premd)
    finally:
        await stop_all([child])


class _SseClient:
    """One ``GET /v1/events`` on a raw connection: counts the events that arrive (frames end in a blank line)."""

    def __init__(self) -> None:
        self.events = 0
        self.connected = asyncio.Event()
        self.changed = asyncio.Event()
        self._tail = b""

    async def run(self, port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(b"GET /v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n")
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"/v1/events answered {head[:40]!r}")
            self.connected.set()
            while data := await reader.read(65536):
                # Chunked transfer: each frame follows a chunk-size line or the blank line ending the last frame.
                seen = self._tail + data
                self.events += seen.count(b"\nid: ")
                self._tail = seen[-8:]
                self.changed.set()
        finally:
            writer.close()


async def _delivered(clients: list[_SseClient], count: int, deadline_s: float) -> None:
    async with asyncio.timeout(deadline_s):
        while any(c.events < count for c in clients):
            laggard = min(clients, key=lambda c: c.events)
            laggard.changed.clear()
            await laggard.changed.wait()


async def _publish(nc: NATS, count: int) -> None:
    js = nc.jetstream()
    for i in range(count):
        event = OperationEvent(
            operation_id=f"op-{uuid.uuid4().hex[:8]}",
            service_id="bench-sse",
            kind="pull",
            type="progress",
            at=time.time(),
            status="Downloading",
            percentage=i % 100,
            bytes_done=i * 1000,
            bytes_total=100_000,
        )
        await js.publish(subjects.service_event(event.service_id, event.operation_id, "progress"), codec.encode(event))


async def _settled_rss(pid: int) -> int:
    """The process's RSS once it stopped moving (three reads 0.2 s apart within 64 KiB), at most 3 s."""
    values = [rss_bytes(pid)]
    for _ in range(15):
        await asyncio.sleep(0.2)  # sampling interval
        values.append(rss_bytes(pid))
        if len(values) >= 3 and max(values[-3:]) - min(values[-3:]) <= 65536:
            break
    return values[-1]


async def _sse_memory(
    figures: dict[str, Figure], progress: Progress, nc: NATS, nats_url: str, quick: bool, reps: int
) -> None:
    batch = 100 if quick else 500
    clients_n = 50 if quick else SSE_CLIENTS
    for rep in range(reps):
        progress.step(f"gateway memory under {clients_n} SSE clients, repetition {rep + 1}/{reps}")
        port = free_port()
        child = await spawn("-m", "bench.gateway", "--gateway", nats_url, str(port), "--front", "--uvloop")
        tasks: list[asyncio.Task[None]] = []
        try:
            await wait_ok(f"http://127.0.0.1:{port}/v1/")
            pid = child.pid
            idle = await _settled_rss(pid)
            clients = [_SseClient() for _ in range(clients_n)]
            tasks = [asyncio.create_task(c.run(port)) for c in clients]
            async with asyncio.timeout(60):
                await asyncio.gather(*(c.connected.wait() for c in clients))
            connected = await _settled_rss(pid)
            after: list[int] = []
            for n in (1, 2):
                await _publish(nc, batch)
                await _delivered(clients, n * batch, 120)
                after.append(await _settled_rss(pid))
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            tasks = []
            await asyncio.sleep(1.0)  # the gateway notices the closed connections and drops their consumers
            left = await _settled_rss(pid)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await stop_all([child])
        label = f"{clients_n} SSE clients"
        rows = [
            ("idle", "gateway RSS, idle, no SSE client", idle),
            ("connected", f"gateway RSS, {label} connected", connected),
            ("batch1", f"gateway RSS, {label}, after {batch} events to each", after[0]),
            ("batch2", f"gateway RSS, {label}, after {2 * batch} events to each", after[1]),
            ("left", f"gateway RSS, after the {label} left", left),
        ]
        for key, title, value in rows:
            base = None if key == "idle" else "sse.rss.idle"
            _fig(figures, f"sse.rss.{key}", title, unit="bytes", baseline=base).add_run([float(value)])
        per_client = (connected - idle) / clients_n
        _fig(figures, "sse.rss.per_client", f"gateway RSS per SSE client ({label})", unit="bytes").add_run([per_client])


def main() -> None:
    parser = argparse.ArgumentParser(description="bench child processes: the bus responders")
    parser.add_argument("--responders", metavar="NATS_URL")
    args = parser.parse_args()
    if args.responders:
        import uvloop

        uvloop.install()
        asyncio.run(serve_responders(args.responders))


if __name__ == "__main__":
    os.environ.setdefault("PREMD_LOG_LEVEL", "WARNING")
    main()
