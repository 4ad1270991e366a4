"""``premd serve`` as a user runs it: embedded NATS, four component processes under its supervision, health,
clean SIGTERM, bad settings, a component killed or unable to start."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import stat
import sys
from asyncio.subprocess import PIPE
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from common import bus, subjects
from common.nats_auth import BusCredentials, credentials_dir, credentials_path, read_credentials
from tests.testbed.util import StopWaiting, free_port, wait_until

PREMD = str(Path(sys.executable).parent / "premd")


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREMD_", "PREM_"))}
    registry = tmp_path / "registry.json"
    registry.write_text("[]")
    env.update(
        PREMD_DATA_DIR=str(tmp_path / "data"),
        PREMD_PORT=str(free_port()),
        PREMD_NATS_PORT=str(free_port()),
        PREM_REGISTRY_URL=registry.as_uri(),
    )
    env.update(extra)
    return env


async def _wait_health(port: int, proc: asyncio.subprocess.Process, deadline: float = 30) -> dict[str, object]:
    body: dict[str, object] = {}
    async with aiohttp.ClientSession() as session:

        async def healthy() -> bool:
            nonlocal body
            if proc.returncode is not None:
                raise StopWaiting("premd exited during start-up")
            async with session.get(f"http://127.0.0.1:{port}/v1/") as resp:
                if resp.status == 200:
                    body = dict(await resp.json())
                return resp.status == 200

        await wait_until(healthy, deadline_s=deadline, interval=0.05, what="premd's health check")
    return body


async def _wait_ready(port: int, proc: asyncio.subprocess.Process, deadline: float = 60) -> None:
    """Until /readyz answers 200: every component answers (GET /v1/ needs only the gateway)."""
    async with aiohttp.ClientSession() as session:

        async def ready() -> bool:
            if proc.returncode is not None:
                raise StopWaiting("premd exited during start-up")
            async with session.get(f"http://127.0.0.1:{port}/readyz") as resp:
                return resp.status == 200

        await wait_until(ready, deadline_s=deadline, interval=0.05, what="premd's readiness")


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


@pytest.fixture
async def premd(tmp_path: Path) -> AsyncIterator[tuple[asyncio.subprocess.Process, dict[str, str]]]:
    env = _env(tmp_path)
    proc = await asyncio.create_subprocess_exec(PREMD, "serve", env=env, stderr=asyncio.subprocess.PIPE)
    try:
        yield proc, env
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_serve_health_discovery_and_clean_sigterm(
    premd: tuple[asyncio.subprocess.Process, dict[str, str]],
) -> None:
    proc, env = premd
    assert await _wait_health(int(env["PREMD_PORT"]), proc) == {"status": True}
    await _wait_ready(int(env["PREMD_PORT"]), proc)
    # A tool's way in: `premd credentials reader` (the file is 0600; anonymous clients are refused).
    printed = await asyncio.create_subprocess_exec(PREMD, "credentials", "reader", env=env, stdout=PIPE)
    given = json.loads((await printed.communicate())[0])
    assert given["url"] == f"nats://127.0.0.1:{env['PREMD_NATS_PORT']}" and given["user"] == subjects.READER
    path = credentials_path(credentials_dir(env["PREMD_DATA_DIR"]), subjects.READER)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and read_credentials(path).password == given["password"]
    reader = BusCredentials(given["user"], given["password"], given["inbox_prefix"])
    nc = await bus.connect(given["url"], "test-reader", reader)
    try:
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox)
        await nc.publish("$SRV.PING", b"", reply=inbox)
        names: set[str] = set()
        async with asyncio.timeout(10):
            while len(names) < 4:
                names.add(json.loads((await sub.next_msg(timeout=10)).data)["name"])
        assert names == {"gateway", "scheduler", "builder", "registry_sync"}
    finally:
        await nc.close()
    children = _children(proc.pid)
    assert sorted(_components(proc.pid)) == sorted(subjects.COMPONENTS), "each component is a child process"
    assert len(children) == 5, "the embedded nats-server and the four components are premd's children"
    proc.send_signal(signal.SIGTERM)
    async with asyncio.timeout(30):
        assert await proc.wait() == 0
    assert not [child for child in children if _alive(child)], "a child of premd outlived it"


def _alive(pid: int) -> bool:
    try:
        return "zombie" not in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False


@pytest.mark.parametrize(
    ("extra", "variable"),
    [({"PREMD_PORT": "not-a-port"}, "PREMD_PORT"), ({"PREMD_HOST": "0.0.0.0"}, "PREMD_HOST")],
)
async def test_bad_settings_stop_start_up_with_one_line(tmp_path: Path, extra: dict[str, str], variable: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        PREMD, "serve", env=_env(tmp_path, **extra), stderr=asyncio.subprocess.PIPE
    )
    _, err = await asyncio.wait_for(proc.communicate(), timeout=30)
    lines = err.decode().strip().splitlines()
    assert proc.returncode == 2
    assert len(lines) == 1 and variable in lines[0], lines


async def test_a_taken_nats_port_is_reported_in_one_line(tmp_path: Path) -> None:
    """The embedded nats-server's own reason (and what to do) reaches the user, not "did not become ready"."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = _env(tmp_path, PREMD_NATS_PORT=str(port), PREMD_LOG_LEVEL="ERROR")
        proc = await asyncio.create_subprocess_exec(PREMD, "serve", env=env, stderr=asyncio.subprocess.PIPE)
        _, err = await asyncio.wait_for(proc.communicate(), timeout=30)
    lines = err.decode().strip().splitlines()
    assert proc.returncode == 1
    assert len(lines) == 1 and lines[0].startswith(f"premd: nats-server could not start on 127.0.0.1:{port}"), lines
    assert "PREMD_NATS_PORT" in lines[0] and "address already in use" in lines[0]


# --- serveproc: premd serve supervises one process per component (issue 13) ---


def _components(pid: int) -> dict[str, int]:
    """premd's component children by name (``python -m <component>``)."""
    found: dict[str, int] = {}
    for child in _children(pid):
        try:
            argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if len(argv) >= 3 and argv[1] == b"-m" and argv[2].decode() in subjects.COMPONENTS:
            found[argv[2].decode()] = child
    return found


@pytest.fixture
async def logged_premd(tmp_path: Path) -> AsyncIterator[tuple[asyncio.subprocess.Process, dict[str, str], Path]]:
    """``premd serve`` with its log (the components' too: they share its stderr) in a file."""
    env = _env(tmp_path)
    log = tmp_path / "premd.log"
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(PREMD, "serve", env=env, stderr=out)
        try:
            yield proc, env, log
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


async def test_a_killed_component_is_restarted_and_premd_keeps_answering(
    logged_premd: tuple[asyncio.subprocess.Process, dict[str, str], Path],
) -> None:
    proc, env, log = logged_premd
    port = int(env["PREMD_PORT"])
    await _wait_ready(port, proc)
    first = _components(proc.pid)
    os.kill(first[subjects.SCHEDULER], signal.SIGKILL)

    async def replaced() -> bool:
        if proc.returncode is not None:
            raise StopWaiting(f"premd exited: {log.read_text()}")
        now = _components(proc.pid).get(subjects.SCHEDULER)
        return now is not None and now != first[subjects.SCHEDULER]

    await wait_until(replaced, deadline_s=30, what="a new scheduler process")
    async with aiohttp.ClientSession() as session:  # the gateway never went away
        async with session.get(f"http://127.0.0.1:{port}/v1/") as resp:
            assert resp.status == 200
    await _wait_ready(port, proc)
    again = _components(proc.pid)
    assert {name: pid for name, pid in again.items() if name != subjects.SCHEDULER} == {
        name: pid for name, pid in first.items() if name != subjects.SCHEDULER
    }, "only the killed component was restarted"
    said = log.read_text()
    assert "scheduler exited (signal SIGKILL)" in said and "scheduler restarted (restart 1)" in said, said
    proc.send_signal(signal.SIGTERM)
    async with asyncio.timeout(30):
        assert await proc.wait() == 0, log.read_text()
    assert not [pid for pid in again.values() if _alive(pid)], "a component outlived premd"


async def test_a_killed_supervisor_leaves_no_child_behind(
    logged_premd: tuple[asyncio.subprocess.Process, dict[str, str], Path],
) -> None:
    """SIGKILL gives premd no chance to stop anything: the kernel ends its children (PR_SET_PDEATHSIG)."""
    proc, env, _ = logged_premd
    await _wait_ready(int(env["PREMD_PORT"]), proc)
    children = _children(proc.pid)
    assert len(children) == 5
    proc.kill()
    await proc.wait()

    async def all_gone() -> bool:
        return not [child for child in children if _alive(child)]

    await wait_until(all_gone, deadline_s=30, what="premd's children ending with it")


async def test_a_component_that_cannot_start_makes_serve_exit_non_zero_naming_it(tmp_path: Path) -> None:
    """The gateway's port is taken: it exits at each start; after its restart budget premd gives up."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        env = _env(tmp_path, PREMD_PORT=str(taken.getsockname()[1]))
        proc = await asyncio.create_subprocess_exec(PREMD, "serve", env=env, stderr=asyncio.subprocess.PIPE)
        try:
            async with asyncio.timeout(120):
                _, err = await proc.communicate()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    lines = err.decode().strip().splitlines()
    assert proc.returncode == 1, lines
    assert lines[-1].startswith("premd: gateway exited 6 times within 60 s (last: exit status 1)"), lines
