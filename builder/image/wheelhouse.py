"""Hermetic Python dependencies: resolved on the host into a wheelhouse, installed in the build with no network.

The wheelhouse of a target holds every wheel its pins resolve to (dependencies included), for the package's
Python and Linux, a ``requirements.lock`` naming each wheel with its sha256 (the build installs it with
``--require-hashes``), and ``installer/pip-<version>-py3-none-any.whl``: base images need nothing but Python,
pip runs from its wheel file. Wheelhouses are cached under ``cache_dir/<key>``, the key being the sha256 of
what decides the download (Python, platforms, requirements, indexes, installer), so a rebuild reuses them.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

from builder.image.errors import BuildError
from builder.package.compat import rewrite_torch_pins
from builder.package.requirements import Pin, parse_pin, parse_requirements
from common.errors import Code
from common.package_config import PackageConfig, arch_of

WHEELHOUSE_SCHEME = "premd-wheelhouse-v1"
# The installer brought into every image that has Python dependencies (pip 24.2 runs on Python 3.8+).
INSTALLER = "pip==24.2"
LOCK_FILE = "requirements.lock"
INSTALLER_DIR = "installer"
# Wheels for glibc up to this version are accepted: Debian bookworm (python:3.x-slim) has 2.36, Ubuntu 22.04
# (nvidia/cuda) 2.35.
MAX_GLIBC_MINOR = 35
DOWNLOAD_TIMEOUT_S = 1800.0
_WHEEL = re.compile(r"^(?P<name>[^-]+)-(?P<version>[^-]+)(-\d[^-]*)?-[^-]+-[^-]+-[^-]+\.whl$")


def requirement_set(config: PackageConfig, package_dir: Path, target: str) -> tuple[list[str], list[str]]:
    """(requirements, extra index URLs) of *target*: the pins of ``python_packages`` and the requirements file,
    with torch wheels chosen for the target (``+cpu``, or the CUDA build of the GPU image)."""
    env = config.environment
    pins: list[Pin] = [p for p in (parse_pin(s) for s in env.python_packages) if p is not None]
    if env.python_requirements:
        pins += parse_requirements((package_dir / env.python_requirements).read_text(encoding="utf-8-sig"))
    cuda = env.cuda if arch_of(target) == "gpu" else None
    return rewrite_torch_pins(pins, cuda)


def platforms(machine: str | None = None) -> list[str]:
    arch = {"amd64": "x86_64", "arm64": "aarch64"}.get((machine or platform.machine()).lower(), machine or "x86_64")
    tags = [f"manylinux_2_{minor}_{arch}" for minor in range(MAX_GLIBC_MINOR, 16, -1)]
    return [*tags, f"manylinux2014_{arch}"]


def wheelhouse_key(python_version: str, plats: list[str], requirements: list[str], indexes: list[str]) -> str:
    material = {
        "scheme": WHEELHOUSE_SCHEME,
        "python": python_version,
        "platforms": plats,
        "requirements": sorted(requirements),
        "indexes": sorted(indexes),
        "installer": INSTALLER,
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


def _pip(args: list[str], what: str) -> None:
    cmd = [sys.executable, "-m", "pip", *args]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=DOWNLOAD_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise BuildError(Code.BUILD_WHEELHOUSE_FAILED, f"{what}: pip took over {DOWNLOAD_TIMEOUT_S}s") from None
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
        errors = [ln for ln in lines if "ERROR" in ln] or lines[-5:]
        raise BuildError(
            Code.BUILD_WHEELHOUSE_FAILED,
            f"{what}: pip download failed (only wheels for Python and Linux are used; sdist-only packages cannot be"
            f" installed offline): {' '.join(errors)[-1500:]}",
        )


def _write_lock(house: Path) -> None:
    lines = []
    for wheel in sorted(house.glob("*.whl")):
        match = _WHEEL.match(wheel.name)
        if match is None:
            raise BuildError(Code.BUILD_WHEELHOUSE_FAILED, f"unexpected wheel file name {wheel.name}")
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        lines.append(f"{match.group('name')}=={match.group('version')} --hash=sha256:{digest}\n")
    (house / LOCK_FILE).write_text("".join(lines))


def prepare_wheelhouse(
    config: PackageConfig, package_dir: Path, cache_dir: Path, target: str = "docker-cpu"
) -> Path | None:
    """The wheelhouse for *target* (downloaded once, then taken from *cache_dir*), or None without Python
    dependencies. Runs ``pip download`` with the host's pip configuration; BuildError on failure."""
    requirements, indexes = requirement_set(config, package_dir, target)
    if not requirements:
        return None
    python = config.environment.python_version
    plats = platforms()
    key = wheelhouse_key(python, plats, requirements, indexes)
    final = cache_dir / key
    if (final / LOCK_FILE).is_file():
        return final
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache_dir / f".tmp-{key[:16]}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        (tmp / "requirements.in").write_text("".join(f"{r}\n" for r in requirements))
        target_args = ["--only-binary=:all:", "--python-version", python, "--implementation", "cp"]
        target_args += [f"--platform={p}" for p in plats]
        common = ["download", "--disable-pip-version-check", "--progress-bar", "off", *target_args]
        index_args = [arg for url in indexes for arg in ("--extra-index-url", url)]
        _pip([*common, "--dest", str(tmp), *index_args, "-r", str(tmp / "requirements.in")], "python packages")
        _pip([*common, "--no-deps", "--dest", str(tmp / INSTALLER_DIR), INSTALLER], "the installer")
        _write_lock(tmp)
        if final.exists() and not (final / LOCK_FILE).is_file():
            shutil.rmtree(final)  # an incomplete leftover (the lock is written last)
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / LOCK_FILE).is_file():  # not a concurrent twin that won the race: a real failure
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def installer_wheel(wheelhouse: Path) -> str:
    """File name of the pip wheel in *wheelhouse*."""
    wheels = sorted((wheelhouse / INSTALLER_DIR).glob("pip-*.whl"))
    if not wheels:
        raise BuildError(Code.BUILD_WHEELHOUSE_FAILED, f"{wheelhouse} has no installer wheel")
    return wheels[0].name
