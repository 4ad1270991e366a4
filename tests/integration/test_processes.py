"""Each component as its own process (`python -m <component>`) on one NATS: discovery and clean SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

from nats.aio.client import Client as NATS

from common import subjects
from tests.testbed.util import free_port


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
