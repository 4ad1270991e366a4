"""Which base image a target builds FROM: ``PREMD_BUILDER_BASE_IMAGES``, keyed by Python (and CUDA for GPU)."""

from __future__ import annotations

from collections.abc import Mapping

from builder.image.errors import BuildError
from builder.package.compat import major_minor
from common.errors import Code
from common.package_config import PackageConfig, arch_of


def base_image_keys(config: PackageConfig, target: str) -> list[str]:
    """The keys looked up, most specific first: ``3.11`` (CPU); ``3.11+cu12.1+cudnn8``, ``3.11+cu12.1`` (GPU)."""
    env = config.environment
    if arch_of(target) == "cpu":
        return [env.python_version]
    cuda = major_minor(env.cuda)
    return [f"{env.python_version}+cu{cuda}+cudnn{env.cudnn}", f"{env.python_version}+cu{cuda}"]


def resolve_base_image(config: PackageConfig, target: str, base_images: Mapping[str, str]) -> str:
    """The image for *target* (``docker-cpu`` / ``docker-gpu``); BuildError naming what was looked for."""
    keys = base_image_keys(config, target)
    for key in keys:
        if key in base_images:
            return base_images[key]
    known = ", ".join(sorted(base_images)) or "none"
    env = config.environment
    wanted = (
        f"Python {env.python_version}"
        if arch_of(target) == "cpu"
        else f"Python {env.python_version} with CUDA {env.cuda} and cuDNN {env.cudnn}"
    )
    raise BuildError(
        Code.BUILD_NO_BASE_IMAGE,
        f"no base image for {target} ({wanted}): looked for {' or '.join(keys)} in PREMD_BUILDER_BASE_IMAGES,"
        f" which has {known}; add {keys[-1]}=<image with that Python> to it",
    )
