"""A real OCI registry on loopback: Debian's ``docker-registry`` (distribution) with its own config.

The Docker engine trusts 127.0.0.0/8 registries over plain HTTP, so ``push_image`` works without TLS.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiodocker

from .util import StopWaiting, free_port, wait_until_sync

REGISTRY_BINARY = "/usr/bin/docker-registry"
START_TIMEOUT_S = 30.0


class RegistryError(RuntimeError):
    """The registry did not start, or a push/pull failed."""


CONFIG_TEMPLATE = """\
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {root}
  delete:
    enabled: true
http:
  addr: 127.0.0.1:{port}
  headers:
    X-Content-Type-Options: [nosniff]
health:
  storagedriver:
    enabled: false
"""


def split_ref(ref: str) -> tuple[str, str]:
    """``host:port/name:tag`` -> (``host:port/name``, ``tag``); tag defaults to ``latest``."""
    last = ref.rsplit("/", 1)[-1]
    if ":" in last:
        repo, tag = ref.rsplit(":", 1)
        return repo, tag
    return ref, "latest"


async def push_image(docker: aiodocker.Docker, local_tag: str, registry_host: str, name: str | None = None) -> str:
    """Tag *local_tag* as ``registry_host/name:tag`` and push it. Returns the remote reference.

    *name* defaults to the local repository path (``premd-test/ref-service``). Raises RegistryError
    when the push stream reports an error or no final digest.
    """
    local_repo, tag = split_ref(local_tag)
    remote_repo = f"{registry_host}/{name or local_repo}"
    await docker.images.tag(local_tag, remote_repo, tag=tag)
    events: list[dict[str, Any]] = []
    try:
        async for event in docker.images.push(remote_repo, tag=tag, stream=True):
            events.append(event)
            if "error" in event or "errorDetail" in event:
                raise RegistryError(f"push {remote_repo}:{tag}: {event.get('error') or event.get('errorDetail')}")
    except aiodocker.DockerError as exc:
        raise RegistryError(f"push {remote_repo}:{tag}: {exc}") from exc
    if not any("Digest" in (ev.get("aux") or {}) for ev in events):
        raise RegistryError(f"push {remote_repo}:{tag}: no digest in push stream: {events[-3:]}")
    return f"{remote_repo}:{tag}"


@dataclass
class OciRegistry:
    """A running registry process; ``host`` is ``127.0.0.1:PORT``."""

    host: str
    root: Path
    process: subprocess.Popen[bytes] = field(repr=False)
    log_path: Path = field(repr=False)
    workdir: Path | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    async def push(self, docker: aiodocker.Docker, local_tag: str, name: str | None = None) -> str:
        return await push_image(docker, local_tag, self.host, name)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 10.0) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=timeout)

    def close(self) -> None:
        """Stop the process and delete the storage directory."""
        self.stop()
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)


def _v2_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/v2/", timeout=2.0) as resp:
            status: int = resp.status
            return status == 200
    except (urllib.error.URLError, OSError):
        return False


def start_registry(workdir: Path | None = None, binary: str = REGISTRY_BINARY, attempts: int = 3) -> OciRegistry:
    """Start a registry on a free loopback port and wait until ``GET /v2/`` answers 200."""
    if shutil.which(binary) is None:
        raise RegistryError(f"{binary} not found; run scripts/install-system-deps.sh (package docker-registry)")
    owned = workdir is None
    base = workdir or Path(tempfile.mkdtemp(prefix="premd-test-registry-"))
    last_error = ""
    for attempt in range(attempts):
        port = free_port()
        root = base / f"storage-{attempt}"
        root.mkdir(parents=True, exist_ok=True)
        config = base / f"config-{attempt}.yml"
        config.write_text(CONFIG_TEMPLATE.format(root=root, port=port))
        log_path = base / f"registry-{attempt}.log"
        with log_path.open("wb") as log_fh:
            proc = subprocess.Popen(
                [binary, "serve", str(config)], stdout=log_fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        registry = OciRegistry(
            host=f"127.0.0.1:{port}", root=root, process=proc, log_path=log_path, workdir=base if owned else None
        )

        def ready(reg: OciRegistry = registry) -> bool:
            if reg.process.poll() is not None:
                raise StopWaiting(f"registry exited with {reg.process.returncode}: {reg.log_tail()}")
            return _v2_ok(reg.url)

        try:
            wait_until_sync(ready, timeout=START_TIMEOUT_S, interval=0.1, what=f"registry {registry.url}/v2/")
        except (StopWaiting, TimeoutError) as exc:
            last_error = str(exc)
            registry.stop()
            continue
        return registry
    if owned:
        shutil.rmtree(base, ignore_errors=True)
    raise RegistryError(f"could not start {binary} after {attempts} attempts: {last_error}")
