"""Benchmark: the pure package steps the builder runs per upload and per build, on packages of several shapes.

Per shape: ``inspect_package`` (every file decompressed once and hashed, jid.yaml parsed and completed),
``extract_package``, ``render_build_context`` (hard links from the extracted package), and the cached
``prepare_wheelhouse`` path (a rebuild: no pip run). The first is what an identical re-upload costs before the
builder finds the package already ready. Part of ``python -m bench`` (suite ``packages``).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

from bench.core import Figure, Progress
from builder.image import prepare_wheelhouse, render_build_context
from builder.package import PackageLimits, extract_package, inspect_package
from tests.support.packages import hello_files, six_files, write_package_zip

MIB = 1024 * 1024


def _shapes(quick: bool) -> list[tuple[str, dict[str, str | bytes], int]]:
    if quick:  # a smoke run: the smallest shape only
        return [("hello (2 files)", hello_files(), zipfile.ZIP_DEFLATED)]
    many = {**hello_files(), **{f"lib/mod_{i:04d}.py": f"X = {i}\n" * 200 for i in range(1000)}}
    weights = {**hello_files(), "weights.bin": os.urandom(256 * MIB)}
    return [
        ("hello (2 files)", hello_files(), zipfile.ZIP_DEFLATED),
        ("1,000 small Python files", many, zipfile.ZIP_DEFLATED),
        ("256 MiB of weights, stored", weights, zipfile.ZIP_STORED),
        ("256 MiB of weights, deflated", weights, zipfile.ZIP_DEFLATED),
    ]


def _time(fn: Callable[[], object], runs: int, setup: Callable[[], None] | None = None) -> list[float]:
    samples = []
    for _ in range(runs):
        if setup is not None:
            setup()
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return samples


def _bench_shape(
    tmp: Path, label: str, files: dict[str, str | bytes], compression: int, runs: int, limits: PackageLimits
) -> list[tuple[str, int, str, list[float]]]:
    zip_path = write_package_zip(tmp / "pkg.zip", files, compression=compression)
    size = zip_path.stat().st_size
    pkg = inspect_package(zip_path, limits)
    src, ctx = tmp / "src", tmp / "ctx"

    def clear() -> None:
        shutil.rmtree(src, ignore_errors=True)
        shutil.rmtree(ctx, ignore_errors=True)

    def clear_ctx() -> None:
        shutil.rmtree(ctx, ignore_errors=True)

    rows = [
        (label, size, "inspect (validate + hash + config)", _time(lambda: inspect_package(zip_path, limits), runs)),
        (label, size, "extract", _time(lambda: extract_package(zip_path, src), runs, clear)),
    ]
    render = lambda: render_build_context(pkg, src, "docker-cpu", "base:1", None, ctx)  # noqa: E731
    rows.append((label, size, "render build context", _time(render, runs, clear_ctx)))
    clear()
    zip_path.unlink()
    return rows


async def run(figures: dict[str, Figure], progress: Progress, quick: bool, reps: int) -> None:
    progress.step("packages: inspect, extract, render, wheelhouse")
    await asyncio.to_thread(_measure, figures, quick, 1 if quick else reps)


def _measure(figures: dict[str, Figure], quick: bool, runs: int) -> None:
    limits = PackageLimits.from_settings()
    rows: list[tuple[str, int, str, list[float]]] = []
    with tempfile.TemporaryDirectory(prefix="premd-bench-packages-") as tmp_name:
        tmp = Path(tmp_name)
        for label, files, compression in _shapes(quick):
            rows += _bench_shape(tmp, label, files, compression, runs, limits)
        if quick:  # the wheelhouse's first run downloads from the package index: not in a smoke run
            return _record(figures, rows)
        six_zip = write_package_zip(tmp / "six.zip", six_files())
        six = inspect_package(six_zip, limits)
        extract_package(six_zip, tmp / "six")
        cache = tmp / "wheels"
        try:
            first = _time(lambda: prepare_wheelhouse(six.config, tmp / "six", cache), 1)
        except Exception:  # the first run downloads from the package index: not every machine reaches one
            first = []
        if first:
            cached = _time(lambda: prepare_wheelhouse(six.config, tmp / "six", cache), runs)
            rows.append(("six==1.16.0", six_zip.stat().st_size, "wheelhouse, first (pip download)", first))
            rows.append(("six==1.16.0", six_zip.stat().st_size, "wheelhouse, cached", cached))
    _record(figures, rows)


def _record(figures: dict[str, Figure], rows: list[tuple[str, int, str, list[float]]]) -> None:
    for label, size, step, samples in rows:
        key = f"packages.{label}.{step}"
        title = f"package {label} ({size / MIB:.2f} MiB zip): {step}"
        figures.setdefault(key, Figure(key, title)).add_run(samples)
