"""Local Debian bookworm base image with Python 3, built with debootstrap (no registry needed).

The image is built once per machine and cached in the engine: ``ensure_base_image()`` only builds
when ``premd-test/base:bookworm`` is missing. A ``fcntl`` file lock keeps concurrent test
processes from building it twice.
"""

from __future__ import annotations

import fcntl
import glob
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

BASE_IMAGE = "premd-test/base:bookworm"
SUITE = "bookworm"
DEB822_SOURCES = Path("/etc/apt/sources.list.d/debian.sources")
LEGACY_SOURCES = Path("/etc/apt/sources.list")
MIRROR_ENV = "PREMD_TEST_DEBIAN_MIRROR"
BUILD_TIMEOUT_S = 900.0
_IMAGE_CHANGES = (
    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "ENV LANG=C.UTF-8",
    'CMD ["python3"]',
    "LABEL org.premd.test=base",
)


class BaseImageError(RuntimeError):
    """The base image could not be built."""


def _deb822_paragraphs(text: str) -> Iterator[dict[str, str]]:
    fields: dict[str, str] = {}
    last_key: str | None = None
    for raw in [*text.splitlines(), ""]:
        if raw.startswith("#"):
            continue
        if not raw.strip():
            if fields:
                yield fields
            fields, last_key = {}, None
            continue
        if raw[0] in " \t" and last_key is not None:
            fields[last_key] += " " + raw.strip()
            continue
        key, sep, value = raw.partition(":")
        if sep:
            last_key = key.strip().lower()
            fields[last_key] = value.strip()


def mirror_from_deb822(text: str, suite: str = SUITE) -> str | None:
    """First ``URIs:`` entry of a ``Types: deb`` paragraph whose ``Suites`` list contains *suite*."""
    for para in _deb822_paragraphs(text):
        if para.get("enabled", "yes").lower() == "no":
            continue
        if "deb" not in para.get("types", "").split():
            continue
        if suite not in para.get("suites", "").split():
            continue
        uris = para.get("uris", "").split()
        if uris:
            return uris[0]
    return None


def mirror_from_sources_list(text: str, suite: str = SUITE) -> str | None:
    """First URL of a ``deb [opts] URL SUITE main ...`` line."""
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line.startswith("deb "):
            continue
        parts = line.split()[1:]
        if parts and parts[0].startswith("["):
            while parts and not parts[0].endswith("]"):
                parts = parts[1:]
            parts = parts[1:]
        if len(parts) >= 3 and parts[1] == suite and "main" in parts[2:]:
            return parts[0]
    return None


def find_debian_mirror(
    deb822: Path = DEB822_SOURCES,
    legacy: Path = LEGACY_SOURCES,
    suite: str = SUITE,
) -> str:
    """The Debian mirror this machine's apt already uses (never a hard-coded host)."""
    override = os.environ.get(MIRROR_ENV)
    if override:
        return override
    candidates_822 = [deb822, *sorted(Path(p) for p in glob.glob(str(deb822.parent / "*.sources")))]
    for path in candidates_822:
        if path.is_file():
            found = mirror_from_deb822(path.read_text(errors="replace"), suite)
            if found:
                return found
    candidates_list = [legacy, *sorted(Path(p) for p in glob.glob(str(legacy.parent / "sources.list.d" / "*.list")))]
    for path in candidates_list:
        if path.is_file():
            found = mirror_from_sources_list(path.read_text(errors="replace"), suite)
            if found:
                return found
    raise BaseImageError(
        f"no apt source for suite {suite!r} in {deb822} or {legacy}; set {MIRROR_ENV} to a Debian mirror URL"
    )


def image_exists(name: str = BASE_IMAGE) -> bool:
    proc = subprocess.run(
        ["docker", "image", "inspect", "--format", "{{.Id}}", name],
        capture_output=True,
        text=True,
        check=False,
    )
    return proc.returncode == 0


@contextmanager
def file_lock(name: str) -> Iterator[None]:
    """Exclusive inter-process lock on ``$TMPDIR/<name>.lock``."""
    path = Path(tempfile.gettempdir()) / f"{name}.lock"
    with path.open("a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _run(cmd: list[str], timeout: float) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-30:])
        raise BaseImageError(f"{' '.join(cmd)} failed with code {proc.returncode}:\n{tail}")


def build_base_image(name: str = BASE_IMAGE, mirror: str | None = None) -> float:
    """Unconditionally debootstrap and import *name*. Returns the build time in seconds."""
    for tool in ("debootstrap", "tar", "docker"):
        if shutil.which(tool) is None:
            raise BaseImageError(f"{tool!r} not found; run scripts/install-system-deps.sh as root")
    mirror = mirror or find_debian_mirror()
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="premd-test-rootfs-", dir="/var/tmp"))
    rootfs = workdir / "rootfs"
    try:
        _run(
            ["debootstrap", "--variant=minbase", "--include=python3", SUITE, str(rootfs), mirror],
            timeout=BUILD_TIMEOUT_S,
        )
        # Slim it down a little: apt caches are useless in the image.
        shutil.rmtree(rootfs / "var/cache/apt/archives", ignore_errors=True)
        (rootfs / "var/cache/apt/archives/partial").mkdir(parents=True, exist_ok=True)
        shutil.rmtree(rootfs / "var/lib/apt/lists", ignore_errors=True)
        (rootfs / "var/lib/apt/lists/partial").mkdir(parents=True, exist_ok=True)
        tar = subprocess.Popen(["tar", "--numeric-owner", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        assert tar.stdout is not None
        try:
            imp = subprocess.run(
                ["docker", "import", *(arg for change in _IMAGE_CHANGES for arg in ("--change", change)), "-", name],
                stdin=tar.stdout,
                capture_output=True,
                text=True,
                timeout=BUILD_TIMEOUT_S,
                check=False,
            )
        finally:
            tar.stdout.close()
            tar_rc = tar.wait(timeout=BUILD_TIMEOUT_S)
        if tar_rc != 0 or imp.returncode != 0:
            raise BaseImageError(f"tar|docker import failed (tar={tar_rc}, import={imp.returncode}): {imp.stderr}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return time.monotonic() - started


def ensure_base_image(name: str = BASE_IMAGE) -> str:
    """Return *name*, building it first if the engine does not have it (cached across runs)."""
    if image_exists(name):
        return name
    with file_lock("premd-test-base-image"):
        if not image_exists(name):
            build_base_image(name)
        if not image_exists(name):
            raise BaseImageError(f"{name} still missing after build")
    return name


if __name__ == "__main__":
    if image_exists(BASE_IMAGE):
        print(f"{BASE_IMAGE} already present")
    else:
        with file_lock("premd-test-base-image"):
            print(f"built {BASE_IMAGE} in {build_base_image():.1f}s")
