"""Benchmark: a package's upload -> ready through premd, against a plain ``docker build`` + run of the very same
generated Dockerfile, in one run on one engine; and an identical re-upload.

Each round uses a new hello package (one extra file makes its ID new), so both sides build the code layer afresh
on the same warm base layers; the order of the two sides alternates. The plain side is what a person would do by
hand with the Dockerfile premd generates: ``docker build --network none``, ``docker run -p``, wait for
``/health-check`` READY, one ``POST /predictions``, ``docker rm -f``, then (the "+ push" row) ``docker push`` to
the same local registry. premd's side is measured from the upload request to ``Status: ready`` seen by polling
``GET /v1/packages/<id>`` every 50 ms. Part of ``python -m bench`` (suite ``builder``).
"""

from __future__ import annotations

import asyncio
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp

from bench.core import Figure, Progress
from builder.image import build_network, prepare_wheelhouse, render_build_context, resolve_base_image
from builder.package import PackageLimits, extract_package, inspect_package
from common.embedded_nats import EmbeddedNats
from common.settings import Settings
from tests.support.builder_bed import builder, builder_settings, gateway, unique, upload, zip_bytes
from tests.support.packages import hello_files
from tests.testbed.base_image import ensure_base_image
from tests.testbed.oci_registry import start_registry
from tests.testbed.util import free_port, wait_until


def _docker(*args: str, timeout: float = 900) -> str:
    done = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args[:3])}: {done.stderr[-2000:]}")
    return done.stdout


async def _plain(tmp: Path, data: bytes, base_image: str, registry: str) -> tuple[float, float, str]:
    """(build + run seconds, push seconds, tag) of the generated Dockerfile done by hand."""
    work = tmp / uuid.uuid4().hex
    work.mkdir()
    zip_path = work / "p.zip"
    zip_path.write_bytes(data)
    started = time.perf_counter()
    pkg = inspect_package(zip_path, PackageLimits.from_settings())
    extract_package(zip_path, work / "src")
    base = resolve_base_image(pkg.config, "docker-cpu", {"3.11": base_image})
    house = prepare_wheelhouse(pkg.config, work / "src", work / "wheels")
    ctx = render_build_context(pkg, work / "src", "docker-cpu", base, house, work / "ctx")
    tag = f"{registry}/premd-bench/plain:{pkg.id[:12]}"
    await asyncio.to_thread(_docker, "build", "--network", build_network(pkg.config), "-t", tag, str(ctx))
    port = free_port()
    container = (await asyncio.to_thread(_docker, "run", "-d", "-p", f"127.0.0.1:{port}:5000", tag)).strip()
    try:
        async with aiohttp.ClientSession() as session:

            async def ready() -> bool:
                async with session.get(f"http://127.0.0.1:{port}/health-check") as resp:
                    return bool((await resp.json()).get("status") == "READY")

            await wait_until(ready, deadline_s=120, interval=0.05, what="plain container ready")
            example = pkg.config.examples[0].input
            async with session.post(f"http://127.0.0.1:{port}/predictions", json={"input": example}) as resp:
                assert (await resp.json())["status"] == "succeeded"
    finally:
        await asyncio.to_thread(_docker, "rm", "-f", container)
    build_run = time.perf_counter() - started
    started = time.perf_counter()
    await asyncio.to_thread(_docker, "push", tag)
    return build_run, time.perf_counter() - started, tag


async def _premd(client: Any, data: bytes) -> tuple[float, dict[str, Any]]:
    started = time.perf_counter()
    resp = await upload(client, data)
    package_id = (await resp.json())["ID"]
    found: dict[str, Any] = {}

    async def ready() -> bool:
        found.update(await (await client.get(f"/v1/packages/{package_id}")).json())
        if found["Status"] == "failed":
            raise RuntimeError(found["Error"])
        return bool(found["Status"] == "ready")

    await wait_until(ready, deadline_s=900, interval=0.05, what="package ready")
    return time.perf_counter() - started, found


async def _reupload(client: Any, data: bytes, samples: int) -> list[float]:
    times = []
    for _ in range(samples):
        started = time.perf_counter()
        resp = await upload(client, data)
        await resp.read()
        assert resp.status == 200
        times.append(time.perf_counter() - started)
    return times


async def run(figures: dict[str, Figure], progress: Progress, quick: bool, reps: int) -> None:
    rounds = 1 if quick else reps
    progress.step(f"builder: upload -> ready vs plain docker build, {rounds} round(s)")
    await _measure(figures, rounds, 3 if quick else 20)


async def _measure(figures: dict[str, Figure], rounds: int, reupload_samples: int) -> None:
    base_image = ensure_base_image()
    registry = start_registry()
    made_tags: list[str] = []
    with tempfile.TemporaryDirectory(prefix="premd-bench-builder-") as tmpdir:
        tmp = Path(tmpdir)
        server = EmbeddedNats(tmp / "nats", port=0)
        await server.start()
        settings = builder_settings(
            Settings(nats_url=server.url, port=free_port(), data_dir=str(tmp / "data"), registry_urls=()),
            base_image,
            registry.host,
            builder_job_ack_wait_s=30.0,
        )
        premd_times: list[float] = []
        plain_times: list[float] = []
        push_times: list[float] = []
        stages: list[dict[str, float]] = []
        reupload: list[float] = []
        try:
            async with builder(settings), gateway(settings) as client:
                # Warm-up (not counted): base layers into the registry, the runtime's layer into the cache.
                _, warm = await _premd(client, zip_bytes(tmp, unique(hello_files())))
                made_tags += [a["Image"] for a in warm["Artifacts"]]
                ours = b""
                for i in range(rounds):
                    ours = zip_bytes(tmp, unique(hello_files()))
                    theirs = zip_bytes(tmp, unique(hello_files()))
                    order = ["premd", "plain"] if i % 2 == 0 else ["plain", "premd"]
                    for side in order:
                        if side == "premd":
                            seconds, record = await _premd(client, ours)
                            premd_times.append(seconds)
                            stages.append(record["Timings"])
                            made_tags += [a["Image"] for a in record["Artifacts"]]
                        else:
                            build_run, push, tag = await _plain(tmp, theirs, base_image, registry.host)
                            plain_times.append(build_run)
                            push_times.append(push)
                            made_tags.append(tag)
                reupload = await _reupload(client, ours, reupload_samples)
        finally:
            await server.stop()
            registry.close()
            for tag in made_tags:
                await asyncio.to_thread(subprocess.run, ["docker", "rmi", "-f", tag], capture_output=True, check=False)
    plain_push = [a + b for a, b in zip(plain_times, push_times, strict=True)]
    for key, title, samples, unit, baseline in (
        ("builder.plain", "plain: docker build + run + one prediction", plain_times, "s", None),
        ("builder.plain-push", "plain: the same + docker push", plain_push, "s", None),
        ("builder.premd", "premd: upload -> ready (build, test, push)", premd_times, "s", "builder.plain-push"),
        ("builder.reupload", "identical re-upload (200, no rebuild)", reupload, "ms", None),
    ):
        figure = figures.setdefault(key, Figure(key, title, unit=unit, baseline=baseline))
        figure.add_run(samples)
    for stage in ("queued", "building", "testing", "pushing"):
        key = f"builder.stage.{stage}"
        figures.setdefault(key, Figure(key, f"premd build stage: {stage}", unit="s")).add_run(
            [s.get(stage, 0.0) for s in stages]
        )
