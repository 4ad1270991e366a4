"""What goes into a package image: the base image, the wheelhouse, the build context and the in-image runtime.

Pure except for ``prepare_wheelhouse``, which runs ``pip download`` (call it in a thread).
"""

from builder.image.base import resolve_base_image
from builder.image.context import build_network, render_build_context, render_dockerfile
from builder.image.errors import BuildError
from builder.image.wheelhouse import prepare_wheelhouse

__all__ = [
    "BuildError",
    "build_network",
    "prepare_wheelhouse",
    "render_build_context",
    "render_dockerfile",
    "resolve_base_image",
]
