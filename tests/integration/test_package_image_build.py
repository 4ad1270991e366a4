"""A rendered build context really builds with no network at all and serves the package it holds.

The package depends on one real pinned PyPI package (six==1.16.0), which the test bed's base image lacks: it
can only come from the wheelhouse, installed by pip run from its wheel (the base image has no pip).
"""

from __future__ import annotations

import re
import subprocess
import uuid
from pathlib import Path

import aiohttp
import pytest

from builder.image import build_network, prepare_wheelhouse, render_build_context, resolve_base_image
from builder.package import PackageLimits, extract_package, inspect_package
from tests.support.packages import six_files, write_package_zip
from tests.testbed.containers import ContainerFactory

pytestmark = pytest.mark.docker


def _docker(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, check=False)


def _stage_images(build_output: str) -> list[str]:
    """Image IDs that ended each non-final stage (the legacy builder keeps them untagged)."""
    stages = re.split(r"Step \d+/\d+ : FROM ", build_output)[1:]
    return [ids[-1] for ids in (re.findall(r" ---> ([0-9a-f]{12})\b", s) for s in stages[:-1]) if ids]


async def test_context_builds_without_network_and_answers_predictions(
    tmp_path: Path, base_image: str, make_container: ContainerFactory
) -> None:
    assert _docker("run", "--rm", "--network", "none", base_image, "python3", "-c", "import six").returncode != 0
    assert _docker("run", "--rm", "--network", "none", base_image, "python3", "-m", "pip").returncode != 0
    zip_path = write_package_zip(tmp_path / "pkg.zip", six_files())
    pkg = inspect_package(zip_path, PackageLimits.from_settings())
    src = tmp_path / "src"
    extract_package(zip_path, src, expected_id=pkg.id)
    base = resolve_base_image(pkg.config, "docker-cpu", {"3.11": base_image})
    house = prepare_wheelhouse(pkg.config, src, tmp_path / "wheel-cache")
    ctx = render_build_context(pkg, src, "docker-cpu", base, house, tmp_path / "ctx")
    tag = f"premd-test-pkg-{uuid.uuid4().hex[:12]}:{pkg.id[:12]}-docker-cpu"
    assert build_network(pkg.config) == "none"
    build = _docker("build", "--network", build_network(pkg.config), "-t", tag, str(ctx))
    stages = _stage_images(build.stdout)
    try:
        assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
        assert len(stages) == 1
        inspect = _docker("image", "inspect", "--format", "{{json .Config.Labels}}", tag)
        assert pkg.id in inspect.stdout
        running = await make_container(tag, ports=(5000,))
        await running.wait_http("/v1/", port=5000, deadline_s=60)
        async with aiohttp.ClientSession() as session:
            async with session.get(running.url(5000) + "/health-check") as resp:
                assert (await resp.json())["status"] == "READY"
            example = pkg.config.examples[0].input
            async with session.post(running.url(5000) + "/predictions", json={"input": example}) as resp:
                body = await resp.json()
            assert body["status"] == "succeeded", body
            assert body["output"] == "hello world (six 1.16.0)"
            async with session.post(running.url(5000) + "/infer", data={"text": "you"}) as resp:
                assert await resp.text() == "hello you (six 1.16.0)"
        user = (await running.show())["Config"]["User"]
        assert user == "10001:10001"
    finally:
        await make_container.cleanup()  # the container first: an image in use would only lose its tag
        _docker("rmi", tag)
        for image in stages:
            _docker("rmi", image)
