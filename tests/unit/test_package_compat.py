"""CUDA/cuDNN selection from the versioned compatibility matrix (builder/package/data/compat.json)."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from builder.package import PackageInvalidError, PackageLimits, inspect_package
from builder.package.compat import MATRIX, choose_cuda, load_matrix, rewrite_torch_pins
from builder.package.requirements import Pin, parse_pin
from common.errors import Code
from common.package_config import Environment
from tests.support.packages import HELLO_MODEL, jid_yaml, write_package_zip

LIMITS = PackageLimits.from_settings()


def _pins(*specs: str) -> dict[str, Pin]:
    pins = [parse_pin(s) for s in specs]
    return {p.name: p for p in pins if p is not None}


def _env(tmp_path: Path, **environment: Any) -> Environment:
    files = {"jid.yaml": jid_yaml(**environment), "model.py": HELLO_MODEL}
    return inspect_package(write_package_zip(tmp_path / "p.zip", files), LIMITS).config.environment


def test_matrix_is_versioned_data_with_sources() -> None:
    raw = json.loads(resources.files("builder.package").joinpath("data/compat.json").read_text())
    assert raw["version"] == MATRIX.version
    assert all(row["source"] for row in raw["torch"] + raw["tensorflow"])
    broken = dict(raw, torch=[dict(raw["torch"][0], cuda=["cu118"])])
    with pytest.raises(ValueError, match=r"major\.minor"):
        load_matrix(json.dumps(broken))


def test_torch_picks_its_newest_cuda_and_that_cudas_cudnn(tmp_path: Path) -> None:
    env = _env(tmp_path, architectures=["gpu"], python_packages=["torch==2.1.0"])
    assert (env.cuda, env.cudnn) == ("12.1", "8")


def test_torch_from_the_requirements_file_counts_too(tmp_path: Path) -> None:
    files = {
        "jid.yaml": jid_yaml(architectures=["cpu", "gpu"], python_requirements="requirements.txt"),
        "model.py": HELLO_MODEL,
        "requirements.txt": "torch==2.0.1\n",
    }
    env = inspect_package(write_package_zip(tmp_path / "p.zip", files), LIMITS).config.environment
    assert (env.cuda, env.cudnn) == ("11.8", "8")


def test_user_cuda_outside_torchs_list_names_the_compatible_ones() -> None:
    with pytest.raises(PackageInvalidError) as info:
        choose_cuda(_pins("torch==2.1.0"), "11.7", "")
    assert info.value.code == Code.PACKAGE_CUDA_INCOMPATIBLE
    assert "11.8, 12.1" in info.value.message and "torch==2.1.0" in info.value.message


def test_cuda_patch_versions_match_their_minor() -> None:
    assert choose_cuda(_pins("torch==2.1.0"), "11.8.0", "").cuda == "11.8.0"


def test_tensorflow_gives_cuda_and_cudnn() -> None:
    choice = choose_cuda(_pins("tensorflow==2.18.1"), "", "")
    assert (choice.cuda, choice.cudnn) == ("12.5", "9")
    with pytest.raises(PackageInvalidError) as info:
        choose_cuda(_pins("tensorflow==2.14.0"), "", "9")
    assert "compatible cuDNN version: 8" in info.value.message


def test_torch_and_tensorflow_must_share_a_cuda_and_keep_tensorflows_cudnn() -> None:
    choice = choose_cuda(_pins("torch==2.0.1", "tensorflow==2.13.0"), "", "")
    assert (choice.cuda, choice.cudnn) == ("11.8", "8")
    with pytest.raises(PackageInvalidError) as info:
        choose_cuda(_pins("torch==2.8.0", "tensorflow==2.13.0"), "", "")
    assert info.value.code == Code.PACKAGE_CUDA_INCOMPATIBLE
    assert "12.6, 12.8, 12.9" in info.value.message and "11.8" in info.value.message


def test_no_framework_uses_the_newest_tensorflow_cuda() -> None:
    newest = max(MATRIX.tensorflow, key=lambda r: tuple(int(x) for x in r.tensorflow.split(".")))
    choice = choose_cuda({}, "", "")
    assert (choice.cuda, choice.cudnn) == (newest.cuda, max(MATRIX.cudnn.by_cuda[newest.cuda], key=int))


def test_cudnn_must_exist_for_the_cuda() -> None:
    with pytest.raises(PackageInvalidError) as info:
        choose_cuda({}, "11.8", "9")
    assert "compatible cuDNN versions: 8" in info.value.message
    assert choose_cuda({}, "12.3", "9").cudnn == "9"


def test_unknown_torch_needs_an_explicit_cuda_and_warns() -> None:
    with pytest.raises(PackageInvalidError) as info:
        choose_cuda(_pins("torch==9.9.0"), "", "")
    assert "known torch versions" in info.value.message and "environment.cuda" in info.value.message
    choice = choose_cuda(_pins("torch==9.9.0"), "12.4", "")
    assert choice.cuda == "12.4" and choice.warnings and "torch==9.9.0" in choice.warnings[0]


def test_local_cuda_pin_names_the_cuda() -> None:
    assert choose_cuda(_pins("torch==2.1.0+cu118"), "", "").cuda == "11.8"


def test_cpu_only_packages_get_no_cuda(tmp_path: Path) -> None:
    env = _env(tmp_path, python_packages=["torch==2.1.0"])
    assert (env.cuda, env.cudnn) == ("", "")


def test_python_without_wheels_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PackageInvalidError) as info:
        _env(tmp_path, python_version="3.12", python_packages=["torch==2.1.0"])
    assert info.value.code == Code.PACKAGE_PYTHON_INCOMPATIBLE and "3.8, 3.9, 3.10, 3.11" in info.value.message


def test_incompatible_cuda_in_jid_yaml_is_a_422_code(tmp_path: Path) -> None:
    with pytest.raises(PackageInvalidError) as info:
        _env(tmp_path, architectures=["gpu"], python_packages=["torch==2.1.0"], cuda="10.2")
    assert info.value.code == Code.PACKAGE_CUDA_INCOMPATIBLE


def test_torch_wheels_are_rewritten_per_target() -> None:
    pins = [p for p in (parse_pin("torch==2.1.0"), parse_pin("torchvision==0.16.0"), parse_pin("six==1.16.0")) if p]
    cpu, cpu_index = rewrite_torch_pins(pins, None)
    assert cpu == ["six==1.16.0", "torch==2.1.0+cpu", "torchvision==0.16.0+cpu"]
    assert cpu_index == ["https://download.pytorch.org/whl/cpu"]
    gpu, gpu_index = rewrite_torch_pins(pins, "12.1")
    assert "torch==2.1.0+cu121" in gpu and gpu_index == ["https://download.pytorch.org/whl/cu121"]
    # The highest CUDA build not above the chosen CUDA.
    assert "torch==2.1.0+cu118" in rewrite_torch_pins(pins, "12.0")[0]
