"""Each component as its own process (`python -m <component>`) on one NATS: discovery and clean SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

from nats.aio.client import Client as NATS

from common import bus, subjects
from common.embedded_nats import EmbeddedNats
from common.nats_auth import credentials_path, ensure_credentials, read_credentials, server_config
from tests.testbed.util import free_port, wait_until


async def test_four_processes_discover_each_other_and_stop_on_sigterm(nats_url: str, nc: NATS, tmp_path: Path) -> None:
    registry = tmp_path / "registry.json"
    registry.write_text("[]")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREMD_", "PREM_"))}
    env.update(
        PREMD_NATS_URL=nats_url,
        PREMD_PORT=str(free_port()),
        PREMD_DATA_DIR=str(tmp_path / "data"),
        PREM_REGISTRY_URL=registry.as_uri(),
    )
    procs = [
        await asyncio.create_subprocess_exec(sys.executable, "-m", name, env=env, stderr=asyncio.subprocess.DEVNULL)
        for name in subjects.COMPONENTS
    ]
    try:
        seen: set[str] = set()
        async with asyncio.timeout(30):
            while seen != set(subjects.COMPONENTS):
                inbox = nc.new_inbox()
                sub = await nc.subscribe(inbox)
                await nc.publish(subjects.SRV_PING, b"", reply=inbox)
                try:
                    while True:
                        msg = await sub.next_msg(timeout=0.5)
                        if msg.data:  # an empty message is the server's "no responders" status
                            seen.add(json.loads(msg.data)["name"])
                except TimeoutError:
                    pass
                finally:
                    await sub.unsubscribe()
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            codes = [await proc.wait() for proc in procs]
        assert codes == [0, 0, 0, 0]
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


# --- serveproc: a component started before its bus waits for it (issue 13) ---


async def test_a_component_started_before_its_nats_server_waits_and_then_serves(
    tmp_path: Path, bus_credentials: Path
) -> None:
    """premd serve starts the gateway while the embedded nats-server starts: the component waits for the port."""
    port = free_port()
    registry = tmp_path / "registry.json"
    registry.write_text("[]")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREMD_", "PREM_"))}
    env.update(
        PREMD_NATS_URL=f"nats://127.0.0.1:{port}",
        PREMD_NATS_CREDENTIALS=str(bus_credentials),
        PREMD_PORT=str(free_port()),
        PREMD_DATA_DIR=str(tmp_path / "data"),
        PREM_REGISTRY_URL=registry.as_uri(),
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", subjects.REGISTRY_SYNC, env=env, stderr=asyncio.subprocess.PIPE
    )
    server = EmbeddedNats(tmp_path / "late-nats", port=port, config=server_config(ensure_credentials(bus_credentials)))
    said: list[bytes] = []
    try:
        assert proc.stderr is not None
        async with asyncio.timeout(60):
            while b"waiting for NATS at 127.0.0.1:%d" % port not in (line := await proc.stderr.readline()):
                assert line, f"the component exited instead of waiting: {b''.join(said).decode()}"
                said.append(line)
        await server.start()
        admin = read_credentials(credentials_path(bus_credentials, subjects.ADMIN))
        nc = await bus.connect(server.url, "test", admin)
        try:

            async def answers() -> bool:
                return subjects.REGISTRY_SYNC in await _pinged(nc)

            await wait_until(answers, deadline_s=30, what="registry_sync on the bus")
        finally:
            await nc.close()
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            _, rest = await proc.communicate()
        assert proc.returncode == 0
        assert b"Connection refused" not in b"".join(said) + rest, "waiting for the port logs no client errors"
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await server.stop()


async def _pinged(nc: NATS) -> set[str]:
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    names: set[str] = set()
    try:
        await nc.publish(subjects.SRV_PING, b"", reply=inbox)
        while True:
            msg = await sub.next_msg(timeout=0.5)
            if msg.data:
                names.add(json.loads(msg.data)["name"])
    except TimeoutError:
        return names
    finally:
        await sub.unsubscribe()
