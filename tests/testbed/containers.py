"""Disposable test containers: random ``premd-test-<uuid>`` names, ports published on 127.0.0.1 only."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiodocker
from aiodocker.containers import DockerContainer

from .util import wait_http_ok, wait_until

TEST_LABEL = "org.premd.test"


@dataclass
class RunningContainer:
    """A container created by :class:`ContainerFactory`; ``ports`` maps container port -> host port."""

    container: DockerContainer
    name: str
    ports: dict[int, int] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return self.container.id

    def url(self, port: int | None = None) -> str:
        """``http://127.0.0.1:<host port>`` for container *port* (default: the only/first published one)."""
        if port is None:
            if not self.ports:
                raise KeyError(f"{self.name} has no published ports")
            port = next(iter(self.ports))
        return f"http://127.0.0.1:{self.ports[port]}"

    async def show(self) -> dict[str, Any]:
        return await self.container.show()

    async def logs(self, tail: int | None = None) -> str:
        kwargs: dict[str, Any] = {"tail": str(tail)} if tail is not None else {}
        lines = await self.container.log(stdout=True, stderr=True, **kwargs)
        return "".join(lines)

    async def wait_exit(self, deadline_s: float = 30.0) -> int:
        """Wait (server-side, with a deadline) for the container to exit; returns its exit code."""
        result = await self.container.wait(timeout=deadline_s)
        return int(result["StatusCode"])

    async def wait_http(self, path: str = "/v1/", *, port: int | None = None, deadline_s: float = 60.0) -> None:
        """Poll ``GET path`` on the published port until it answers 200."""
        url = self.url(port) + path
        await wait_http_ok(url, deadline_s=deadline_s)


class ContainerFactory:
    """``await factory(image, env=..., ports=(8000,))`` creates and starts a container; all deleted on cleanup."""

    def __init__(self, docker: aiodocker.Docker) -> None:
        self.docker = docker
        self.created: list[RunningContainer] = []

    async def __call__(
        self,
        image: str,
        *,
        env: Mapping[str, str] | None = None,
        ports: Sequence[int] = (8000,),
        cmd: Sequence[str] | None = None,
        labels: Mapping[str, str] | None = None,
        name: str | None = None,
        start: bool = True,
        host_config: Mapping[str, Any] | None = None,
        config: Mapping[str, Any] | None = None,
    ) -> RunningContainer:
        name = name or f"premd-test-{uuid.uuid4().hex[:12]}"
        hc: dict[str, Any] = {
            "PortBindings": {f"{p}/tcp": [{"HostIp": "127.0.0.1", "HostPort": ""}] for p in ports},
        }
        hc.update(host_config or {})
        cfg: dict[str, Any] = {
            "Image": image,
            "Env": [f"{k}={v}" for k, v in (env or {}).items()],
            "ExposedPorts": {f"{p}/tcp": {} for p in ports},
            "Labels": {TEST_LABEL: "1", **(labels or {})},
            "HostConfig": hc,
        }
        if cmd is not None:
            cfg["Cmd"] = list(cmd)
        cfg.update(config or {})
        container = await self.docker.containers.create(cfg, name=name)
        running = RunningContainer(container=container, name=name)
        self.created.append(running)
        if start:
            await container.start()
            await self.refresh_ports(running, ports)
        return running

    async def refresh_ports(self, running: RunningContainer, ports: Sequence[int], deadline_s: float = 10.0) -> None:
        """Read the host ports Docker assigned (they appear once the container is started)."""

        async def mapped() -> bool:
            info = await running.show()
            published = (info.get("NetworkSettings") or {}).get("Ports") or {}
            for port in ports:
                for binding in published.get(f"{port}/tcp") or []:
                    if binding.get("HostIp") in ("127.0.0.1", "") and binding.get("HostPort"):
                        running.ports[port] = int(binding["HostPort"])
            state = info.get("State") or {}
            # An already-exited container has no port bindings any more; nothing to wait for.
            return all(p in running.ports for p in ports) or not state.get("Running")

        await wait_until(mapped, deadline_s=deadline_s, what=f"{running.name} ports")

    async def cleanup(self) -> None:
        errors: list[str] = []
        for running in reversed(self.created):
            try:
                await running.container.delete(force=True, v=True)
            except aiodocker.DockerError as exc:
                if exc.status != 404:
                    errors.append(f"{running.name}: {exc}")
        self.created.clear()
        if errors:
            raise RuntimeError("could not delete test containers: " + "; ".join(errors))
