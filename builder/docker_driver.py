"""The builder's Docker: build a context, test an image in a throwaway container, tag and push. The only aiodocker
user in builder/.

The test container has no network at all (``NetworkMode: none``), so nothing is published: the builder talks to
the runtime from inside, running a small stdlib client (``PROBE``) with ``docker exec``. One exec waits for
readiness (polling ``/health-check`` in the container), one sends the example to ``/predictions``; meanwhile the
container is watched, so an early exit is seen at once rather than at the setup timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import tarfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiodocker
import aiohttp

from common.docker_host import NO_CONNECTION_STATUS, docker_host
from common.errors import AppError, Code, ConflictError, InternalError, UnavailableError
from common.package_config import RUNTIME_PORT

logger = logging.getLogger(__name__)

LABEL_PACKAGE = "org.premd.package.id"
LABEL_TEST = "org.premd.builder.test"
"""On test containers: the package id (a restarted builder removes what a killed one left)."""
TMPFS_SIZE = "256m"
PIDS_LIMIT = 512

LineSink = Callable[[str], Awaitable[None]]

PROBE = r"""
import json, sys, time, urllib.error, urllib.request
mode, port = sys.argv[1], int(sys.argv[2])
base = "http://127.0.0.1:%d" % port
if mode == "ready":
    deadline = time.monotonic() + float(sys.argv[3])
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(base + "/health-check", timeout=5) as resp:
                body = json.loads(resp.read() or b"{}")
        except (OSError, ValueError):
            time.sleep(0.05)
            continue
        if body.get("status") in ("READY", "SETUP_FAILED"):
            print(json.dumps(body))
            sys.exit(0)
        time.sleep(0.05)
    sys.exit(3)
req = urllib.request.Request(base + "/predictions", data=sys.argv[3].encode(),
                             headers={"Content-Type": "application/json"}, method="POST")
try:
    with urllib.request.urlopen(req, timeout=float(sys.argv[4])) as resp:
        print(resp.read().decode())
except urllib.error.HTTPError as exc:
    print(exc.read().decode())
"""


class BuildFailed(ConflictError):
    """Docker could not build the context (a step failed): the message holds Docker's reason."""


@dataclass(frozen=True, slots=True)
class TestSpec:
    image: str
    package_id: str
    inputs: Mapping[str, Any]
    memory_bytes: int
    setup_timeout_s: float
    run_timeout_s: float
    gpu: bool = False


@dataclass(frozen=True, slots=True)
class TestRun:
    """What the test saw: passed, or the code and reason it failed; timings, output and the container's log."""

    passed: bool
    code: str = ""
    reason: str = ""
    setup_seconds: float | None = None
    run_seconds: float | None = None
    output: Any = None
    log: str = ""


@contextlib.contextmanager
def _mapped(what: str) -> Iterator[None]:
    try:
        yield
    except aiodocker.DockerError as exc:
        if exc.status == NO_CONNECTION_STATUS:
            raise UnavailableError(Code.DOCKER_UNAVAILABLE, f"{what}: {exc.message}") from None
        raise InternalError(Code.DOCKER_ERROR, f"{what}: {exc.message}") from None
    except (aiohttp.ClientConnectionError, ConnectionError, FileNotFoundError) as exc:
        raise UnavailableError(Code.DOCKER_UNAVAILABLE, f"{what}: Docker does not answer ({exc})") from None


def write_context_tar(context: Path, dest: Path) -> Path:
    """The build context as an uncompressed tar file (streamed to Docker from disk, never held in memory)."""
    with tarfile.open(dest, "w") as tar:
        for path in sorted(context.rglob("*")):
            tar.add(path, arcname=path.relative_to(context).as_posix(), recursive=False)
    return dest


class BuilderDocker:
    def __init__(self, docker: aiodocker.Docker | None = None) -> None:
        # premd's resolution, not aiodocker's (an AssertionError when no engine is installed): see docker_host.
        self._docker = docker or aiodocker.Docker(url=docker_host())

    async def close(self) -> None:
        await self._docker.close()

    # ------------------------------------------------------------ build

    async def build(
        self, context_tar: Path, tag: str, network: str, labels: Mapping[str, str], timeout_s: float, log: LineSink
    ) -> str:
        """Build ``context_tar`` as ``tag`` with ``network`` (``none``: no network for any step); returns the
        image id. Every output line goes to ``log``; a failing step raises BuildFailed with Docker's reason."""
        params = {
            "t": tag,
            "rm": "1",
            "forcerm": "1",
            "networkmode": network,
            "labels": json.dumps(dict(labels)),
        }
        image_id = ""
        with _mapped(f"build of {tag}"), context_tar.open("rb") as body:
            async with self._docker._query(
                "build",
                "POST",
                params=params,
                headers={"content-type": "application/x-tar"},
                data=body,
                timeout=aiohttp.ClientTimeout(total=timeout_s),
            ) as resp:
                pending = b""
                async for chunk in resp.content.iter_any():
                    pending += chunk
                    *lines, pending = pending.split(b"\n")
                    for raw in lines:
                        image_id = await self._build_line(raw, log) or image_id
                if pending.strip():
                    image_id = await self._build_line(pending, log) or image_id
        if not image_id:
            info = await self.image(tag)
            if info is None:
                raise BuildFailed(Code.BUILD_FAILED, f"docker build of {tag} ended without an image")
            image_id = str(info["Id"])
        return image_id

    @staticmethod
    async def _build_line(raw: bytes, log: LineSink) -> str | None:
        if not raw.strip():
            return None
        try:
            item = json.loads(raw)
        except ValueError:
            await log(raw.decode(errors="replace").rstrip())
            return None
        if error := item.get("error"):
            detail = (item.get("errorDetail") or {}).get("message") or error
            await log(f"ERROR: {detail}")
            raise BuildFailed(Code.BUILD_FAILED, f"docker build failed: {str(detail).strip()}")
        if text := item.get("stream"):
            for line in str(text).splitlines():
                if line.strip():
                    await log(line.rstrip())
        aux = item.get("aux") or {}
        found = aux.get("ID")
        return str(found) if found else None

    async def image(self, ref: str) -> dict[str, Any] | None:
        try:
            with _mapped(f"inspect {ref}"):
                info: dict[str, Any] = await self._docker.images.inspect(ref)
                return info
        except InternalError:
            return None

    async def remove_image(self, ref: str) -> None:
        with contextlib.suppress(AppError), _mapped(f"remove {ref}"):
            try:
                await self._docker.images.delete(ref, force=True)
            except aiodocker.DockerError as exc:
                if exc.status != 404:
                    raise

    # ------------------------------------------------------------ push

    async def push(self, ref: str, log: LineSink) -> str:
        """Push ``ref`` (``<registry>/<repo>:<tag>``); returns the manifest digest the registry reported."""
        repo, _, tag = ref.rpartition(":")
        digest = ""
        try:
            with _mapped(f"push {ref}"):
                async for item in self._docker.images.push(repo, tag=tag, stream=True):
                    if error := item.get("error"):
                        raise ConflictError(Code.BUILD_PUSH_FAILED, f"push of {ref} failed: {error}")
                    aux = item.get("aux") or {}
                    if aux.get("Digest"):
                        digest = str(aux["Digest"])
                    status = item.get("status")
                    if status and not item.get("progressDetail"):
                        await log(f"push: {item.get('id', '')} {status}".replace("  ", " "))
        except InternalError as exc:
            raise ConflictError(Code.BUILD_PUSH_FAILED, exc.message) from None
        if not digest:
            raise ConflictError(Code.BUILD_PUSH_FAILED, f"push of {ref}: the registry reported no digest")
        return digest

    # ------------------------------------------------------------ test

    async def remove_test_containers(self, package_id: str) -> int:
        """Remove test containers of ``package_id`` (left by a builder killed while testing it)."""
        filters = json.dumps({"label": [f"{LABEL_TEST}={package_id}"]})
        with _mapped("list test containers"):
            raw: list[dict[str, Any]] = await self._docker._query_json(
                "containers/json", params={"all": "1", "filters": filters}
            )
        for item in raw:
            await self._remove_container(str(item["Id"]))
        return len(raw)

    async def test_containers(self, package_id: str) -> list[str]:
        filters = json.dumps({"label": [f"{LABEL_TEST}={package_id}"]})
        with _mapped("list test containers"):
            raw: list[dict[str, Any]] = await self._docker._query_json(
                "containers/json", params={"all": "1", "filters": filters}
            )
        return [str(item["Id"]) for item in raw]

    async def _remove_container(self, container_id: str) -> None:
        with contextlib.suppress(AppError), _mapped(f"remove {container_id}"):
            try:
                await self._docker.containers.container(container_id).delete(force=True, v=True)
            except aiodocker.DockerError as exc:
                if exc.status != 404:
                    raise

    async def test(self, spec: TestSpec) -> TestRun:
        """Start the image with no network and a memory limit, wait for setup, run one prediction; the container
        is always removed."""
        host: dict[str, Any] = {
            "NetworkMode": "none",
            "Memory": spec.memory_bytes,
            "MemorySwap": spec.memory_bytes,
            "PidsLimit": PIDS_LIMIT,
            "ReadonlyRootfs": True,
            "Tmpfs": {"/tmp": f"size={TMPFS_SIZE}"},
        }
        if spec.gpu:
            host["DeviceRequests"] = [{"Driver": "nvidia", "Count": 1, "Capabilities": [["gpu"]]}]
        config: dict[str, Any] = {
            "Image": spec.image,
            "Labels": {LABEL_TEST: spec.package_id, LABEL_PACKAGE: spec.package_id},
            "HostConfig": host,
        }
        name = f"premd-test-{spec.package_id[:12]}-{uuid.uuid4().hex[:8]}"
        with _mapped(f"create test container of {spec.image}"):
            container = await self._docker.containers.create(config, name=name)
        try:
            with _mapped(f"start test container of {spec.image}"):
                await container.start()
            started = time.monotonic()
            ready = await self._wait_ready(container, spec)
            if isinstance(ready, TestRun):
                return ready
            setup_seconds = time.monotonic() - started
            return await self._predict(container, spec, setup_seconds)
        finally:
            await self._remove_container(container.id)

    async def _wait_ready(self, container: aiodocker.containers.DockerContainer, spec: TestSpec) -> TestRun | None:
        """None once READY; else the failed TestRun (setup failed, container exited, or the setup timeout)."""
        probe = asyncio.ensure_future(
            self._exec(container, ["ready", str(RUNTIME_PORT), f"{spec.setup_timeout_s:g}"], spec.setup_timeout_s + 10)
        )
        exited = asyncio.ensure_future(container.wait())
        try:
            done, _ = await asyncio.wait(
                {probe, exited}, timeout=spec.setup_timeout_s, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for task in (probe, exited):
                task.cancel()
            await asyncio.gather(probe, exited, return_exceptions=True)
        if probe in done and not probe.cancelled() and probe.exception() is None:
            code, out = probe.result()
            body = _json_or_none(out)
            if code == 0 and body is not None and body.get("status") == "READY":
                return None
            if body is not None and body.get("status") == "SETUP_FAILED":
                logs = str((body.get("setup") or {}).get("logs") or "")
                return TestRun(
                    passed=False,
                    code=Code.BUILD_SETUP_FAILED,
                    reason=f"setup() failed: {_last_line(logs) or 'see the log'}",
                    log=await self._logs(container),
                )
        if exited in done and not exited.cancelled() and exited.exception() is None:
            status = exited.result().get("StatusCode")
            return TestRun(
                passed=False,
                code=Code.BUILD_SETUP_FAILED,
                reason=f"the container exited with code {status} before it was ready",
                log=await self._logs(container),
            )
        return TestRun(
            passed=False,
            code=Code.BUILD_SETUP_TIMEOUT,
            reason=f"setup() did not finish within {spec.setup_timeout_s:g} s",
            log=await self._logs(container),
        )

    async def _predict(
        self, container: aiodocker.containers.DockerContainer, spec: TestSpec, setup_seconds: float
    ) -> TestRun:
        body = json.dumps({"input": dict(spec.inputs)})
        started = time.monotonic()
        try:
            code, out = await self._exec(
                container, ["predict", str(RUNTIME_PORT), body, f"{spec.run_timeout_s:g}"], spec.run_timeout_s + 10
            )
        except TimeoutError:
            code, out = -1, ""
        run_seconds = time.monotonic() - started
        log = await self._logs(container)
        answer = _json_or_none(out)
        if answer is None:
            reason = (
                f"run() did not answer within {spec.run_timeout_s:g} s"
                if code == -1 or "timed out" in out
                else f"the prediction did not answer: {_last_line(out) or f'exit code {code}'}"
            )
            return TestRun(
                passed=False, code=Code.BUILD_TEST_FAILED, reason=reason, setup_seconds=setup_seconds, log=log
            )
        metrics = answer.get("metrics") or {}
        if isinstance(metrics, dict) and isinstance(metrics.get("predict_time"), int | float):
            run_seconds = float(metrics["predict_time"])
        if answer.get("status") != "succeeded":
            error = str(answer.get("error") or "run() failed")
            return TestRun(
                passed=False,
                code=Code.BUILD_TEST_FAILED,
                reason=f"run() failed: {_last_line(error)}",
                setup_seconds=setup_seconds,
                run_seconds=run_seconds,
                log=log,
            )
        return TestRun(
            passed=True, setup_seconds=setup_seconds, run_seconds=run_seconds, output=answer.get("output"), log=log
        )

    async def _exec(
        self, container: aiodocker.containers.DockerContainer, args: list[str], timeout_s: float
    ) -> tuple[int, str]:
        """Run the probe in the container; (exit code, stdout)."""
        async with asyncio.timeout(timeout_s):
            with _mapped("exec in the test container"):
                ex = await container.exec(["python3", "-c", PROBE, *args], stdout=True, stderr=True)
                out: list[bytes] = []
                async with ex.start(detach=False) as stream:
                    while (msg := await stream.read_out()) is not None:
                        if msg.stream == 1:
                            out.append(msg.data)
                info: dict[str, Any] = await ex.inspect()
        code = info.get("ExitCode")
        return (int(code) if code is not None else -1), b"".join(out).decode(errors="replace")

    async def _logs(self, container: aiodocker.containers.DockerContainer) -> str:
        try:
            with _mapped("logs of the test container"):
                chunks: list[str] = await container.log(stdout=True, stderr=True)
        except AppError:
            return ""
        return "".join(chunks)


def _json_or_none(text: str) -> dict[str, Any] | None:
    """The probe's JSON answer (the whole output, else its last line: a model may print before it)."""
    for candidate in (text.strip(), _last_line(text)):
        try:
            value = json.loads(candidate) if candidate else None
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""
