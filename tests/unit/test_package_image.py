"""Image side: base image choice, the wheelhouse's requirement set and cache, the generated build context."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from builder.image import (
    BuildError,
    build_network,
    prepare_wheelhouse,
    render_build_context,
    render_dockerfile,
    resolve_base_image,
)
from builder.image.base import base_image_keys
from builder.image.context import runtime_source
from builder.image.wheelhouse import LOCK_FILE, platforms, requirement_set, wheelhouse_key
from builder.package import InspectedPackage, PackageLimits, extract_package, inspect_package
from common.errors import Code
from common.package_config import PackageConfig
from common.settings import DEFAULT_BASE_IMAGES, parse_base_images
from tests.support.packages import hello_files, write_package_zip

IMAGES = {"3.11": "python:3.11-slim", "3.11+cu12.1": "cuda-py311:12.1", "3.12+cu11.8+cudnn8": "cuda-py312:11.8"}


def _pkg(tmp_path: Path, extra: dict[str, str] | None = None, **environment: Any) -> tuple[InspectedPackage, Path]:
    files = {**hello_files(**environment), **(extra or {})}
    zip_path = write_package_zip(tmp_path / "p.zip", files, executable=[k for k in files if k.endswith(".sh")])
    pkg = inspect_package(zip_path, PackageLimits.from_settings())
    extract_package(zip_path, tmp_path / "src", expected_id=pkg.id)
    return pkg, tmp_path / "src"


def _config(**env: Any) -> PackageConfig:
    from common.package_config import Environment

    return PackageConfig(name="a/b", model="model.py:Model", environment=Environment(**env))


def test_default_base_images_setting_parses() -> None:
    assert parse_base_images(DEFAULT_BASE_IMAGES) == {"3.11": "python:3.11-slim", "3.12": "python:3.12-slim"}


def test_cpu_and_gpu_base_images() -> None:
    assert resolve_base_image(_config(), "docker-cpu", IMAGES) == "python:3.11-slim"
    gpu = _config(architectures=("gpu",), cuda="12.1", cudnn="8")
    assert base_image_keys(gpu, "docker-gpu") == ["3.11+cu12.1+cudnn8", "3.11+cu12.1"]
    assert resolve_base_image(gpu, "docker-gpu", IMAGES) == "cuda-py311:12.1"
    patch = _config(python_version="3.12", architectures=("gpu",), cuda="11.8.0", cudnn="8")
    assert resolve_base_image(patch, "gpu", IMAGES) == "cuda-py312:11.8"


def test_no_base_image_names_what_was_looked_for() -> None:
    with pytest.raises(BuildError) as info:
        resolve_base_image(_config(python_version="3.13"), "docker-cpu", IMAGES)
    assert info.value.code == Code.BUILD_NO_BASE_IMAGE
    assert "3.13" in info.value.message and "3.11, 3.11+cu12.1" in info.value.message
    with pytest.raises(BuildError) as info:
        resolve_base_image(_config(architectures=("gpu",), cuda="12.4", cudnn="9"), "docker-gpu", IMAGES)
    assert "3.11+cu12.4+cudnn9 or 3.11+cu12.4" in info.value.message


def test_dockerfile_layers_go_from_least_to_most_volatile(tmp_path: Path) -> None:
    pkg, _ = _pkg(tmp_path, python_packages=["six==1.16.0"], system_packages=["ffmpeg"])
    text = render_dockerfile(pkg, "docker-cpu", "python:3.11-slim", "pip-24.2-py3-none-any.whl")
    order = [
        "AS wheels",
        "--require-hashes",
        "FROM python:3.11-slim\n",
        "apt-get install",
        "COPY --from=wheels",
        "COPY premd_runtime.py",
        "COPY code /code",
        "USER ",
        "LABEL ",
        "CMD ",
    ]
    positions = [text.index(marker) for marker in order]
    assert positions == sorted(positions)
    assert "--no-index" in text and "--find-links" in text and "ffmpeg" in text
    assert pkg.id in text.split("LABEL ", 1)[1]  # the package ID appears only after every cacheable layer
    assert pkg.id not in text.split("LABEL ", 1)[0].split("\n", 1)[1]


def test_dockerfile_without_dependencies_has_no_wheel_stage_and_no_apt(tmp_path: Path) -> None:
    pkg, _ = _pkg(tmp_path)
    text = render_dockerfile(pkg, "docker-cpu", "python:3.11-slim", None)
    assert "AS wheels" not in text and "apt-get" not in text and "pip" not in text
    assert text.count("FROM ") == 1 and "NVIDIA" not in text


def test_gpu_dockerfile_asks_for_the_gpu() -> None:
    pkg = InspectedPackage(id="0" * 64, config=_config(architectures=("gpu",), cuda="12.1", cudnn="8"), files=[])
    assert "NVIDIA_VISIBLE_DEVICES=all" in render_dockerfile(pkg, "docker-gpu", "cuda-py311:12.1", None)


def test_build_context_holds_code_runtime_and_wheels(tmp_path: Path) -> None:
    pkg, src = _pkg(tmp_path, {"bin/start.sh": "#!/bin/sh\n", "lib/util.py": "X = 1\n"})
    (src / "stray.txt").write_text("not in the manifest")
    house = tmp_path / "house"
    (house / "installer").mkdir(parents=True)
    (house / "installer" / "pip-24.2-py3-none-any.whl").write_bytes(b"pip")
    (house / "six-1.16.0-py2.py3-none-any.whl").write_bytes(b"six")
    (house / LOCK_FILE).write_text("six==1.16.0 --hash=sha256:00\n")
    ctx = render_build_context(pkg, src, "docker-cpu", "base:1", house, tmp_path / "ctx")
    assert sorted(p.name for p in ctx.iterdir()) == ["Dockerfile", "code", "premd_runtime.py", "wheels"]
    assert sorted(str(p.relative_to(ctx / "code")) for p in (ctx / "code").rglob("*") if p.is_file()) == [
        "bin/start.sh",
        "jid.yaml",
        "lib/util.py",
        "model.py",
    ]
    assert os.stat(ctx / "code/bin/start.sh").st_mode & 0o777 == 0o755
    assert (ctx / "premd_runtime.py").read_text() == runtime_source()
    assert (ctx / "wheels/installer/pip-24.2-py3-none-any.whl").read_bytes() == b"pip"
    assert "pip-24.2-py3-none-any.whl/pip" in (ctx / "Dockerfile").read_text()
    with pytest.raises(ValueError, match="not empty"):
        render_build_context(pkg, src, "docker-cpu", "base:1", house, ctx)


def test_requirement_set_joins_both_sources_and_picks_torch_wheels(tmp_path: Path) -> None:
    pkg, src = _pkg(
        tmp_path,
        {"requirements.txt": "torch==2.1.0\n"},
        architectures=["cpu", "gpu"],
        python_packages=["six==1.16.0"],
        python_requirements="requirements.txt",
    )
    assert requirement_set(pkg.config, src, "docker-cpu") == (
        ["six==1.16.0", "torch==2.1.0+cpu"],
        ["https://download.pytorch.org/whl/cpu"],
    )
    assert requirement_set(pkg.config, src, "docker-gpu") == (
        ["six==1.16.0", "torch==2.1.0+cu121"],
        ["https://download.pytorch.org/whl/cu121"],
    )


def test_wheelhouse_key_depends_on_what_decides_the_download() -> None:
    plats = platforms("x86_64")
    assert plats[0] == "manylinux_2_35_x86_64" and "manylinux2014_x86_64" in plats
    assert platforms("aarch64")[0].endswith("_aarch64")
    base = wheelhouse_key("3.11", plats, ["a==1", "b==2"], [])
    assert wheelhouse_key("3.11", plats, ["b==2", "a==1"], []) == base
    assert (
        len(
            {
                base,
                wheelhouse_key("3.12", plats, ["a==1", "b==2"], []),
                wheelhouse_key("3.11", plats, ["a==1", "b==3"], []),
                wheelhouse_key("3.11", plats, ["a==1", "b==2"], ["https://x"]),
            }
        )
        == 4
    )


def test_no_python_dependencies_no_wheelhouse(tmp_path: Path) -> None:
    pkg, src = _pkg(tmp_path)
    assert prepare_wheelhouse(pkg.config, src, tmp_path / "cache") is None
    assert not (tmp_path / "cache").exists()


def test_wheelhouse_is_downloaded_once_and_locked(tmp_path: Path) -> None:
    pkg, src = _pkg(tmp_path, python_packages=["six==1.16.0"])
    cache = tmp_path / "cache"
    house = prepare_wheelhouse(pkg.config, src, cache)
    assert house is not None and house.parent == cache
    assert [p.name for p in house.glob("*.whl")] == ["six-1.16.0-py2.py3-none-any.whl"]
    assert [p.name for p in (house / "installer").glob("*.whl")] == ["pip-24.2-py3-none-any.whl"]
    lock = (house / LOCK_FILE).read_text()
    assert lock.startswith("six==1.16.0 --hash=sha256:") and len(lock.split("sha256:")[1].strip()) == 64
    stamp = (house / LOCK_FILE).stat().st_mtime_ns
    assert prepare_wheelhouse(pkg.config, src, cache) == house
    assert (house / LOCK_FILE).stat().st_mtime_ns == stamp  # taken from the cache, not downloaded again
    assert [p.name for p in cache.iterdir()] == [house.name]


def test_wheelhouse_failure_is_a_build_error(tmp_path: Path) -> None:
    pkg, src = _pkg(tmp_path, python_packages=["six==0.0.1"])
    with pytest.raises(BuildError) as info:
        prepare_wheelhouse(pkg.config, src, tmp_path / "cache")
    assert info.value.code == Code.BUILD_WHEELHOUSE_FAILED and "six==0.0.1" in info.value.message
    assert list((tmp_path / "cache").iterdir()) == []


def test_only_apt_needs_a_network_during_the_build() -> None:
    assert build_network(_config()) == "none"
    assert build_network(_config(python_packages=("six==1.16.0",))) == "none"
    assert build_network(_config(system_packages=("ffmpeg",))) == "default"


def test_context_code_has_fixed_times(tmp_path: Path) -> None:
    pkg, src = _pkg(tmp_path, {"lib/util.py": "X = 1\n"})
    ctx = render_build_context(pkg, src, "docker-cpu", "base:1", None, tmp_path / "ctx")
    times = {p.stat().st_mtime for p in [*(ctx / "code").rglob("*"), ctx / "code"]}
    assert times == {315532800.0}
    assert not (ctx / "wheels").exists()
