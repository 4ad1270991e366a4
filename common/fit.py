"""Pure decisions about what this machine can run: image choice, fit checks, GPU placement.

Shared by the scheduler (which enforces) and the gateway (which reports premd's ``supported`` /
``enough*`` fields): one place for the rules so the two never disagree. No I/O here.
"""

from __future__ import annotations

import msgspec

from common.errors import Code, FitError
from common.manifest import ImageEntry, Manifest
from common.messages import GpuInfo, HostFacts

MIB = 1024 * 1024


class Fit(msgspec.Struct, frozen=True, kw_only=True):
    supported: bool
    """An image exists for this hardware."""
    gpu: bool
    """The chosen image is the GPU variant."""
    image: ImageEntry | None
    enough_memory: bool
    """Free memory now (GPU memory for GPU images, RAM otherwise) covers memoryRequirements."""
    enough_system_memory: bool
    """Total memory (the largest GPU, or RAM) covers memoryRequirements at all."""
    enough_storage: bool
    """The image fits in the free space where Docker stores images."""


def select_image(manifest: Manifest, facts: HostFacts | None) -> tuple[ImageEntry | None, bool]:
    """The image for this host and whether it is the GPU variant (premd: gpu if a GPU exists, else cpu)."""
    images = manifest.docker_images
    if images is None or not manifest.is_docker():
        return None, False
    if facts is not None and facts.gpus and images.gpu is not None:
        return images.gpu, True
    if images.cpu is not None:
        return images.cpu, False
    return None, False


def assess(manifest: Manifest, facts: HostFacts | None, *, running: bool = False, downloaded: bool = False) -> Fit:
    """premd's listing flags, computed right: per GPU (not summed), free vs total not swapped, RAM for CPU images."""
    image, gpu = select_image(manifest, facts)
    need = manifest.memory_requirements_mib()
    enough_memory = enough_system = enough_storage = True
    if facts is not None and image is not None:
        free_mib, total_mib = _memory_mib(facts, gpu)
        if need is not None:
            enough_memory = running or free_mib >= need
            enough_system = total_mib >= need
        enough_storage = downloaded or image.size <= facts.disk_free_bytes
    return Fit(
        supported=image is not None,
        gpu=gpu,
        image=image,
        enough_memory=enough_memory,
        enough_system_memory=enough_system,
        enough_storage=enough_storage,
    )


def _memory_mib(facts: HostFacts, gpu: bool) -> tuple[int, int]:
    if gpu:
        return max(g.memory_free_mib for g in facts.gpus), max(g.memory_total_mib for g in facts.gpus)
    return facts.memory_available_bytes // MIB, facts.memory_total_bytes // MIB


def check_memory(manifest: Manifest, facts: HostFacts) -> None:
    """Refuse a start that cannot fit, with the numbers. Raises FitError."""
    image, gpu = select_image(manifest, facts)
    need = manifest.memory_requirements_mib()
    if image is None or need is None:
        return
    free_mib, _ = _memory_mib(facts, gpu)
    if free_mib >= need:
        return
    if gpu:
        raise FitError(Code.FIT_GPU_MEMORY, f"needs {need} MiB GPU memory, best GPU has {free_mib} MiB free")
    raise FitError(Code.FIT_MEMORY, f"needs {need} MiB memory, this machine has {free_mib} MiB available")


def check_disk(manifest: Manifest, facts: HostFacts) -> None:
    """Refuse a pull whose image cannot fit on Docker's disk. Raises FitError."""
    image, _ = select_image(manifest, facts)
    if image is None or image.size <= facts.disk_free_bytes:
        return
    raise FitError(
        Code.FIT_DISK,
        f"image needs {image.size // MIB} MiB of disk, Docker's disk has {facts.disk_free_bytes // MIB} MiB free",
    )


def place_gpus(manifest: Manifest, gpus: list[GpuInfo]) -> list[GpuInfo]:
    """The GPU a GPU service runs on: the one with the most free memory that fits (lowest index on ties).

    Returns [] when no GPU fits or the service needs none; callers that force a start take the best GPU.
    """
    if not gpus:
        return []
    need = manifest.memory_requirements_mib() or 0
    best = max(gpus, key=lambda g: (g.memory_free_mib, -g.index))
    return [best] if best.memory_free_mib >= need else []
