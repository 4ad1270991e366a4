"""A model package's completed configuration, as the gateway returns it and the builder stores it.

The JSON keys are the original model server's (Go field names): ``Name``, ``Environment{PythonVersion, ...}``,
``Model``, plus ``Examples``. The input side, ``jid.yaml`` with snake_case keys, is parsed and completed by
``builder/package``; what comes out is always a complete ``PackageConfig`` (defaults filled in, CUDA/cuDNN chosen
for GPU packages). Lists are encoded as ``[]``, never ``null``.
"""

from __future__ import annotations

import msgspec

DEFAULT_PYTHON_VERSION = "3.11"
DEFAULT_ARCHITECTURES = ("cpu",)
ARCHITECTURES = ("cpu", "gpu")
# Artifact targets, one per architecture, named as the original did ("docker-cpu", "docker-gpu").
TARGET_BY_ARCH = {"cpu": "docker-cpu", "gpu": "docker-gpu"}
RUNTIME_PORT = 5000
"""The port a package's image serves on: its runtime's ``PORT``, the builder's test calls, the catalog entry."""

ExampleValue = str | int | float | bool | None


class Environment(
    msgspec.Struct,
    frozen=True,
    kw_only=True,
    rename={
        "python_version": "PythonVersion",
        "python_requirements": "PythonRequirements",
        "python_packages": "PythonPackages",
        "system_packages": "SystemPackages",
        "architectures": "Architectures",
        "cuda": "CUDA",
        "cudnn": "CuDNN",
    },
):
    python_version: str = DEFAULT_PYTHON_VERSION
    """``major.minor`` of the Python the image runs; picks the base image."""
    python_requirements: str = ""
    """Path of a requirements file inside the package ("" when none); every line pinned."""
    python_packages: tuple[str, ...] = ()
    """``name==version`` pins."""
    system_packages: tuple[str, ...] = ()
    """Debian package names installed with apt."""
    architectures: tuple[str, ...] = DEFAULT_ARCHITECTURES
    """``cpu`` and/or ``gpu``: one image target each."""
    cuda: str = ""
    """CUDA ``major.minor`` of the GPU image ("" for CPU-only packages)."""
    cudnn: str = ""
    """cuDNN major version of the GPU image ("" for CPU-only packages)."""


class Example(msgspec.Struct, frozen=True, kw_only=True, rename={"input": "Input", "output": "Output"}):
    """One test input for ``run(**input)``; ``output``, when given, is what the test expects back."""

    input: dict[str, ExampleValue] = {}
    output: str | None = None


class PackageConfig(
    msgspec.Struct,
    frozen=True,
    kw_only=True,
    rename={"name": "Name", "environment": "Environment", "model": "Model", "examples": "Examples"},
):
    name: str
    """Image repository path (``<registry>/<name>:<tag>``), e.g. ``acme/hello``."""
    model: str
    """``<module>.py:<Class>``, the module's path relative to the package root."""
    environment: Environment = msgspec.field(default_factory=Environment)
    examples: tuple[Example, ...] = ()

    def targets(self) -> list[str]:
        """The artifact targets to build, in the order of ``architectures``."""
        return [TARGET_BY_ARCH[arch] for arch in self.environment.architectures]

    def model_module(self) -> str:
        """The dotted module name of ``model`` (``pkg/infer.py:Model`` -> ``pkg.infer``)."""
        return self.model.split(".py:", 1)[0].replace("/", ".")

    def model_class(self) -> str:
        return self.model.split(".py:", 1)[1]


def arch_of(target: str) -> str:
    """``docker-gpu`` -> ``gpu``; a bare architecture is accepted as it is."""
    arch = target.removeprefix("docker-")
    if arch not in TARGET_BY_ARCH:
        raise ValueError(f"unknown target {target!r} (known: {', '.join(TARGET_BY_ARCH.values())})")
    return arch
