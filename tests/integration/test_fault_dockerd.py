"""dockerd killed (SIGKILL) and restarted under a scheduler (issue 9 fault suite): premd reports the engine as
unavailable (host facts, ``docker.unavailable`` naming the socket) and converges once it is back.

The machine's shared dockerd is never touched (other test runs use it): the test starts a private second
dockerd of its own (own socket, data root, exec root and pid file, no iptables rules), loads the reference
service image into it, and points the scheduler at it with ``DOCKER_HOST``. Its default network is a bridge
interface the test creates (and deletes) under a name of its own. Not ``--bridge=none``: a dockerd started
with it deletes the ``docker0`` interface at start-up (it takes it for its own stale bridge), which cuts the
shared engine's containers off and fails every start there until ``docker0`` is made again.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import aiodocker
import msgspec
import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from common import bus, subjects
from common.errors import UnavailableError
from common.jetstream import kv_bucket, kv_get
from common.messages import (
    ContainerStatsList,
    GetContainerStats,
    HostFacts,
    OperationAccepted,
    ServiceState,
    StartService,
)
from common.settings import Settings
from tests.support.scheduler_bed import (
    Events,
    new_service_id,
    put_catalog,
    ref_manifest,
    running_scheduler,
    wait_observed,
)
from tests.testbed.util import StopWaiting, free_port, wait_until

pytestmark = pytest.mark.docker

DOCKERD = shutil.which("dockerd") or "/usr/sbin/dockerd"
START_S = 60.0


class PrivateEngine:
    """A dockerd of the test's own under a short directory in /tmp (unix socket paths are limited to 108 bytes)."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="premd-dockerd-", dir="/tmp"))
        self.bridge = f"premd-{uuid.uuid4().hex[:8]}"
        """Its own bridge interface (15 characters at most); dockerd gives it a subnet no other network uses."""
        self.socket = self.root / "docker.sock"
        self.host = f"unix://{self.socket}"
        self.log = self.root / "dockerd.log"
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        if not self._bridge_exists():
            await _run("ip", "link", "add", "name", self.bridge, "type", "bridge")
            await _run("ip", "link", "set", self.bridge, "up")
        with self.log.open("ab") as out:
            self.proc = await asyncio.create_subprocess_exec(
                DOCKERD,
                f"--host={self.host}",
                f"--data-root={self.root / 'data'}",
                f"--exec-root={self.root / 'exec'}",
                f"--pidfile={self.root / 'docker.pid'}",
                f"--bridge={self.bridge}",
                "--iptables=false",
                "--ip6tables=false",
                "--ip-masq=false",
                "--ip-forward=false",
                stdout=out,
                stderr=out,
            )
        proc = self.proc

        async def answers() -> bool:
            if proc.returncode is not None:
                raise StopWaiting(f"dockerd exited {proc.returncode}: {self.log.read_text()[-3000:]}")
            async with aiodocker.Docker(url=self.host) as client:
                await client.version()
            return True

        await wait_until(answers, deadline_s=START_S, what="the private dockerd answering")

    async def kill(self) -> None:
        """SIGKILL the daemon; its containerd dies with it (the kernel's parent-death signal)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        async with asyncio.timeout(30):
            await self.proc.wait()
        # The orphaned containerd is reaped by PID 1, which in this sandbox is slow to do so: until then it is a
        # zombie, its pid file still names it, and a restarted dockerd waits on it as "still running" and fails.
        pid_file = self.root / "exec" / "containerd" / "containerd.pid"

        async def containerd_dead() -> bool:
            return _dead(pid_file)

        await wait_until(containerd_dead, deadline_s=30, what="the killed daemon's containerd dead")
        pid_file.unlink(missing_ok=True)

    async def close(self) -> None:
        """Stop it (and its containerd), then remove every process and mount left under its directory."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            try:
                async with asyncio.timeout(30):
                    await self.proc.wait()
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        for pid in self._processes():  # a containerd or shim left by the SIGKILLed daemon
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for mount in sorted(self._mounts(), reverse=True):
            umount = await asyncio.create_subprocess_exec("umount", "-l", mount)
            await umount.wait()
        shutil.rmtree(self.root, ignore_errors=True)
        if self._bridge_exists():
            await _run("ip", "link", "del", self.bridge)

    def _bridge_exists(self) -> bool:
        return _interface_exists(self.bridge)

    def _processes(self) -> list[int]:
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    if str(self.root).encode() in (entry / "cmdline").read_bytes():
                        found.append(int(entry.name))
        return found

    def _mounts(self) -> list[str]:
        lines = Path("/proc/mounts").read_text().splitlines()
        return [fields[1] for line in lines if (fields := line.split()) and fields[1].startswith(str(self.root))]


async def _run(*argv: str) -> None:
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await proc.communicate()
    assert proc.returncode == 0, (argv, out.decode(errors="replace"))


def _interface_exists(name: str) -> bool:
    return Path(f"/sys/class/net/{name}").exists()


def _dead(pid_file: Path) -> bool:
    """The process the pid file names has exited (gone, or a zombie not reaped yet)."""
    pid = pid_file.read_text().strip() if pid_file.exists() else ""
    if not pid:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state in ("Z", "X")


@asynccontextmanager
async def private_engine(image: str) -> AsyncIterator[PrivateEngine]:
    """The private engine with ``image`` loaded from the machine's engine (``docker save | docker load``)."""
    engine = PrivateEngine()
    try:
        await engine.start()
        archive = engine.root / "image.tar"
        for argv in (["docker", "save", "-o", str(archive), image], ["docker", "--host", engine.host, "load", "-i"]):
            if argv[-1] == "-i":
                argv.append(str(archive))
            proc = await asyncio.create_subprocess_exec(
                *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
            )
            async with asyncio.timeout(180):
                out, _ = await proc.communicate()
            assert proc.returncode == 0, (argv, out.decode(errors="replace"))
        archive.unlink()
        yield engine
    finally:
        await engine.close()


def docker_reported(js: JetStreamContext, available: bool) -> Callable[[], Awaitable[bool]]:
    """The scheduler's host facts say the engine is (or is not) available."""

    async def check() -> bool:
        facts, _ = await kv_get(await kv_bucket(js, subjects.KV_HOST), subjects.HOST_FACTS_KEY, HostFacts)
        return facts is not None and facts.docker_available is available

    return check


async def test_dockerd_killed_and_restarted_is_reported_then_converged(
    nc: NATS,
    js: JetStreamContext,
    settings: Settings,
    ref_image: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sid = new_service_id("dockerd")
    await put_catalog(js, ref_manifest(sid, ref_image, defaultExternalPort=free_port(), volumePath=None))
    quick = msgspec.structs.replace(
        settings, host_facts_interval_s=0.5, reconcile_interval_s=1.0, crash_backoff_s=0.2, docker_timeout_s=5.0
    )
    shared_bridge = _interface_exists("docker0")  # the machine's engine's, which the private one must not touch
    async with private_engine(ref_image) as engine:
        monkeypatch.setenv("DOCKER_HOST", engine.host)
        async with running_scheduler(quick) as scheduler, aiodocker.Docker(url=engine.host) as private:
            assert scheduler.driver.host == engine.host
            await wait_observed(js, sid, lambda s: s.downloaded)
            events = await Events.of_service(js, sid)
            accepted = await bus.request(
                nc, subjects.SCHEDULER_START, StartService(service_id=sid), OperationAccepted, 10
            )
            assert (await events.final(accepted.operation_id, timeout=60)).type == "succeeded"
            await events.close()
            before = await wait_observed(js, sid, lambda s: s.ready)

            await engine.kill()
            # Reported: the host facts say so, and a command that needs the engine answers 503 naming it.
            await wait_until(docker_reported(js, False), deadline_s=30, what="docker reported away")
            with pytest.raises(UnavailableError) as refused:
                await bus.request(nc, subjects.SCHEDULER_CONTAINER_STATS, GetContainerStats(), ContainerStatsList, 10)
            assert refused.value.code == "docker.unavailable" and str(engine.socket) in refused.value.message

            await engine.start()
            await wait_until(docker_reported(js, True), deadline_s=30, what="docker reported back")
            # Converged: the service runs (the restarted daemon stopped its container: it is started again),
            # one container, the one the observed state names.
            # (The observed state still says ready in the old container until the scheduler sees it stopped: the
            # state and the engine are compared together, each poll.)
            seen: tuple[ServiceState | None, list[str]] = (None, [])

            async def one_running_as_observed() -> bool:
                nonlocal seen
                state = await _observed(js, sid)
                listed = await private.containers.list(all=True)
                mine = [c for c in listed if c["Labels"].get("io.premd.service") == sid]
                running = [c["Id"] for c in mine if c["State"] == "running"]
                seen = (state, [f"{c['Id'][:12]} {c['State']}" for c in mine])
                return state is not None and state.ready and len(mine) == 1 and running == [state.container_id]

            try:
                await wait_until(one_running_as_observed, deadline_s=90, what="one running container, as observed")
            except TimeoutError:
                raise AssertionError(f"not converged: {seen}") from None
            final = seen[0]
            assert final is not None and final.phase == "ready", final
            assert final.restarts >= (1 if final.container_id != before.container_id else 0), final
            stats = await bus.request(
                nc, subjects.SCHEDULER_CONTAINER_STATS, GetContainerStats(), ContainerStatsList, 10
            )
            assert [s.id for s in stats.stats] == [sid], stats
            for c in await private.containers.list(all=True):
                await c.delete(force=True)
    assert _interface_exists("docker0") == shared_bridge


async def _observed(js: JetStreamContext, sid: str) -> ServiceState | None:
    state, _ = await kv_get(await kv_bucket(js, subjects.KV_OBSERVED), sid, ServiceState)
    return state
