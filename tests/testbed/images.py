"""The reference service image ``premd-test/ref-service:1``, built FROM the local base image.

Rebuilt only when missing or when ``refservice/server.py`` changed (its sha256 is kept in an image label).
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path
from typing import Any

import aiodocker

from .base_image import BASE_IMAGE

REF_IMAGE = "premd-test/ref-service:1"
REF_PORT = 8000
SERVER_PY = Path(__file__).resolve().parent / "refservice" / "server.py"
SHA_LABEL = "org.premd.test.server-sha256"


class ImageBuildError(RuntimeError):
    """docker build reported an error."""


def server_source() -> bytes:
    return SERVER_PY.read_bytes()


def server_sha256() -> str:
    return hashlib.sha256(server_source()).hexdigest()


def dockerfile(base: str = BASE_IMAGE, sha: str | None = None) -> str:
    return "\n".join(
        [
            f"FROM {base}",
            "COPY server.py /srv/server.py",
            f'LABEL {SHA_LABEL}="{sha or server_sha256()}" org.premd.test=ref-service',
            "ENV PYTHONUNBUFFERED=1",
            f"EXPOSE {REF_PORT}",
            'CMD ["python3", "-u", "/srv/server.py"]',
            "",
        ]
    )


def build_context(files: dict[str, bytes]) -> io.BytesIO:
    """An in-memory (uncompressed) tar with *files* at its root."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    return buf


async def image_labels(docker: aiodocker.Docker, name: str) -> dict[str, str] | None:
    """The image's labels, or None when the image does not exist."""
    try:
        info: dict[str, Any] = await docker.images.inspect(name)
    except aiodocker.DockerError as exc:
        if exc.status == 404:
            return None
        raise
    labels = (info.get("Config") or {}).get("Labels") or {}
    return {str(k): str(v) for k, v in labels.items()}


async def build_image(docker: aiodocker.Docker, tag: str, files: dict[str, bytes]) -> list[str]:
    """Build *tag* from an in-memory context; returns the build log lines, raises ImageBuildError."""
    lines: list[str] = []
    context = build_context(files)
    try:
        async for item in docker.images.build(
            fileobj=context, encoding="application/x-tar", tag=tag, rm=True, forcerm=True, stream=True
        ):
            if "error" in item or "errorDetail" in item:
                raise ImageBuildError(f"building {tag}: {item.get('error') or item.get('errorDetail')}")
            if "stream" in item:
                lines.append(str(item["stream"]).rstrip("\n"))
    except aiodocker.DockerError as exc:
        raise ImageBuildError(f"building {tag}: {exc}\n" + "\n".join(lines[-20:])) from exc
    return lines


async def ensure_ref_image(docker: aiodocker.Docker, tag: str = REF_IMAGE, base: str = BASE_IMAGE) -> str:
    """Return *tag*, (re)building it when missing or built from a different server.py."""
    sha = server_sha256()
    labels = await image_labels(docker, tag)
    if labels is not None and labels.get(SHA_LABEL) == sha:
        return tag
    await build_image(docker, tag, {"Dockerfile": dockerfile(base, sha).encode(), "server.py": server_source()})
    labels = await image_labels(docker, tag)
    if labels is None or labels.get(SHA_LABEL) != sha:
        raise ImageBuildError(f"{tag} missing or stale after build (labels: {labels})")
    return tag
