"""The CUDA/cuDNN compatibility matrix of torch and tensorflow, kept as versioned data in ``data/compat.json``.

Loaded and validated once, at import: a malformed data file stops the builder at start, not mid-upload.
Versions are compared numerically on ``major.minor`` (``11.1`` and ``11.1.1`` are the same CUDA), unlike the
original, which compared strings exactly.
"""

from __future__ import annotations

import json
import re
from importlib import resources

import msgspec

from builder.package.errors import PackageInvalidError
from builder.package.requirements import Pin
from common.errors import Code

_MAJOR_MINOR = re.compile(r"^\d+\.\d+$")


class TorchRow(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    torch: str
    torchvision: str
    torchaudio: str
    pythons: list[str]
    cuda: list[str]
    """CUDA versions the release has wheels for (``+cu<major><minor>`` on the torch index)."""
    source: str


class TensorflowRow(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    tensorflow: str
    """``major.minor``: patch releases of a series share its tested configuration."""
    pythons: list[str]
    cuda: str
    cudnn: str
    source: str


class CudnnTable(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    source: str
    by_cuda: dict[str, list[str]]


class CompatMatrix(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    version: str
    comment: str
    torch_index: str
    torch: list[TorchRow]
    tensorflow: list[TensorflowRow]
    cudnn: CudnnTable


def version_key(version: str) -> tuple[int, ...]:
    """Numeric sort key of ``1.13.1`` (local ``+cu118`` and pre-release suffixes ignored)."""
    numbers = re.findall(r"\d+", version.split("+", 1)[0].split("rc", 1)[0])
    return tuple(int(n) for n in numbers)


def major_minor(version: str) -> str:
    parts = version.split(".")
    return ".".join(parts[:2])


def _validate(matrix: CompatMatrix) -> CompatMatrix:
    def check(ok: bool, what: str) -> None:
        if not ok:
            raise ValueError(f"builder/package/data/compat.json: {what}")

    check(bool(matrix.version), "version is empty")
    check("{variant}" in matrix.torch_index, "torch_index lacks {variant}")
    for row in matrix.torch:
        check(all(_MAJOR_MINOR.match(c) for c in row.cuda), f"torch {row.torch}: cuda must be major.minor")
        check(bool(row.pythons) and bool(row.source), f"torch {row.torch}: pythons and source are required")
    for tf in matrix.tensorflow:
        check(_MAJOR_MINOR.match(tf.tensorflow) is not None, f"tensorflow {tf.tensorflow}: must be major.minor")
        check(_MAJOR_MINOR.match(tf.cuda) is not None, f"tensorflow {tf.tensorflow}: cuda must be major.minor")
        check(tf.cudnn.isdigit() and bool(tf.source), f"tensorflow {tf.tensorflow}: cudnn major and source required")
    for cuda, majors in matrix.cudnn.by_cuda.items():
        check(_MAJOR_MINOR.match(cuda) is not None and all(m.isdigit() for m in majors), f"cudnn.by_cuda {cuda}")
    check(len({r.torch for r in matrix.torch}) == len(matrix.torch), "a torch version appears twice")
    check(len({r.tensorflow for r in matrix.tensorflow}) == len(matrix.tensorflow), "a tensorflow row appears twice")
    return matrix


def load_matrix(text: str) -> CompatMatrix:
    return _validate(msgspec.convert(json.loads(text), CompatMatrix, strict=True))


MATRIX = load_matrix(resources.files("builder.package").joinpath("data/compat.json").read_text())


def _listing(versions: list[str]) -> str:
    return ", ".join(sorted(set(versions), key=version_key))


class CudaChoice(msgspec.Struct, frozen=True):
    cuda: str
    cudnn: str
    warnings: list[str]


def torch_row(pins: dict[str, Pin]) -> TorchRow | None:
    pin = pins.get("torch")
    if pin is None:
        return None
    version = pin.version.split("+", 1)[0]
    return next((row for row in MATRIX.torch if row.torch == version), None)


def tensorflow_row(pins: dict[str, Pin]) -> TensorflowRow | None:
    pin = pins.get("tensorflow") or pins.get("tensorflow-gpu")
    if pin is None:
        return None
    series = major_minor(pin.version)
    return next((row for row in MATRIX.tensorflow if row.tensorflow == series), None)


def check_python(python_version: str, pins: dict[str, Pin]) -> None:
    """A known torch / tensorflow release must have wheels for the package's Python."""
    for name in ("torch", "tensorflow", "tensorflow-gpu"):
        pin = pins.get(name)
        row = torch_row(pins) if name == "torch" else tensorflow_row(pins)
        if pin is not None and row is not None and python_version not in row.pythons:
            raise PackageInvalidError(
                Code.PACKAGE_PYTHON_INCOMPATIBLE,
                f"{pin.requirement} has no wheels for Python {python_version};"
                f" it supports Python {_listing(row.pythons)} (set environment.python_version)",
            )


def _incompatible(message: str) -> PackageInvalidError:
    return PackageInvalidError(Code.PACKAGE_CUDA_INCOMPATIBLE, message)


def choose_cuda(pins: dict[str, Pin], cuda: str, cudnn: str) -> CudaChoice:
    """CUDA and cuDNN for a GPU image, from the torch / tensorflow pins and what the user set.

    Torch gives candidate CUDAs (a ``+cuXYZ`` pin names one); tensorflow gives one CUDA and its cuDNN, which
    wins; with neither, the default is the newest tensorflow row's (the original's intended default). A user
    ``cuda`` must be a candidate; a release the matrix does not know is accepted only with an explicit ``cuda``
    (recorded as a warning), since nothing else could choose one.
    """
    warnings: list[str] = []
    candidates: list[str] | None = None
    torch_pin, tf_pin = pins.get("torch"), pins.get("tensorflow") or pins.get("tensorflow-gpu")
    tf = tensorflow_row(pins)
    if torch_pin is not None:
        local = torch_pin.version.partition("+")[2]
        row = torch_row(pins)
        if local.startswith("cu") and local[2:].isdigit():
            pinned = f"{local[2:-1]}.{local[-1]}"
            candidates = [pinned]
        elif row is not None:
            candidates = list(row.cuda)
        elif cuda:
            warnings.append(
                f"{torch_pin.requirement} is not in the compatibility matrix {MATRIX.version}; using CUDA {cuda} as set"
            )
        else:
            known = _listing([r.torch for r in MATRIX.torch])
            raise _incompatible(
                f"{torch_pin.requirement} is not in the compatibility matrix (version {MATRIX.version}), so no CUDA"
                f" can be chosen for it; known torch versions: {known}. Set environment.cuda to build it anyway"
            )
    if tf_pin is not None:
        if tf is None and not cuda:
            known = _listing([r.tensorflow for r in MATRIX.tensorflow])
            raise _incompatible(
                f"{tf_pin.requirement} is not in the compatibility matrix (version {MATRIX.version}); known"
                f" tensorflow series: {known}. Set environment.cuda and environment.cudnn to build it anyway"
            )
        if tf is None:
            warnings.append(
                f"{tf_pin.requirement} is not in the compatibility matrix {MATRIX.version}; using CUDA {cuda} as set"
            )
        else:
            if candidates is not None and tf.cuda not in [major_minor(c) for c in candidates]:
                assert torch_pin is not None
                raise _incompatible(
                    f"{tf_pin.requirement} needs CUDA {tf.cuda} but {torch_pin.requirement} works with CUDA"
                    f" {_listing(candidates)}; pin versions that share a CUDA"
                )
            candidates = [tf.cuda]
    if cuda:
        if candidates is not None and major_minor(cuda) not in [major_minor(c) for c in candidates]:
            who = " and ".join(p.requirement for p in (torch_pin, tf_pin) if p is not None)
            raise _incompatible(
                f"CUDA {cuda} is not compatible with {who}; compatible CUDA versions: {_listing(candidates)}"
            )
        chosen = cuda
    elif candidates:
        chosen = max(candidates, key=version_key)
    else:
        newest_tf = max(MATRIX.tensorflow, key=lambda r: version_key(r.tensorflow))
        chosen = newest_tf.cuda
    known_cudnn = MATRIX.cudnn.by_cuda.get(major_minor(chosen))
    if tf is not None:
        if cudnn and cudnn != tf.cudnn:
            raise _incompatible(
                f"cuDNN {cudnn} is not compatible with {tf_pin.requirement if tf_pin else 'tensorflow'};"
                f" compatible cuDNN version: {tf.cudnn}"
            )
        return CudaChoice(chosen, tf.cudnn, warnings)
    if cudnn:
        if known_cudnn is not None and cudnn not in known_cudnn:
            raise _incompatible(
                f"CUDA {chosen} is not compatible with cuDNN {cudnn};"
                f" compatible cuDNN versions: {', '.join(known_cudnn)}"
            )
        if known_cudnn is None:
            warnings.append(
                f"CUDA {chosen} is not in the compatibility matrix {MATRIX.version}; using cuDNN {cudnn} as set"
            )
        return CudaChoice(chosen, cudnn, warnings)
    if known_cudnn is None:
        raise _incompatible(
            f"no cuDNN is known for CUDA {chosen} (matrix {MATRIX.version} knows CUDA"
            f" {_listing(list(MATRIX.cudnn.by_cuda))}); set environment.cudnn"
        )
    return CudaChoice(chosen, max(known_cudnn, key=int), warnings)


def torch_variant(cuda: str | None, row: TorchRow) -> str:
    """The torch index variant for a target: ``cpu``, or ``cuXYZ`` with the highest CUDA not above *cuda*."""
    if cuda is None:
        return "cpu"
    fitting = [c for c in row.cuda if version_key(c) <= version_key(major_minor(cuda))]
    best = max(fitting or row.cuda, key=version_key)
    return "cu" + best.replace(".", "")


def rewrite_torch_pins(pins: list[Pin], cuda: str | None) -> tuple[list[str], list[str]]:
    """Requirements for one target: torch / torchvision / torchaudio pins of known releases get the wheel
    variant of the target (``+cpu``, or ``+cuXYZ`` for the chosen CUDA) and its index; everything else, and pins
    that already name a variant, pass unchanged. Returns (requirements, extra index URLs), both sorted."""
    out: list[str] = []
    indexes: set[str] = set()
    for pin in pins:
        row = None
        if "+" not in pin.version:
            for candidate in MATRIX.torch:
                if (pin.name, pin.version) in (
                    ("torch", candidate.torch),
                    ("torchvision", candidate.torchvision),
                    ("torchaudio", candidate.torchaudio),
                ):
                    row = candidate
                    break
        if row is None:
            out.append(pin.requirement)
            continue
        variant = torch_variant(cuda, row)
        out.append(f"{pin.name}=={pin.version}+{variant}")
        indexes.add(MATRIX.torch_index.format(variant=variant))
    return sorted(out), sorted(indexes)
