"""jid.yaml: syntax and type errors placed at line and column, validation, and config completion."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest

from builder.package import PackageInvalidError, PackageLimits, inspect_package
from common.errors import Code
from common.package_config import PackageConfig
from tests.support.packages import HELLO_MODEL, jid_yaml, write_package_zip

LIMITS = PackageLimits.from_settings()


def _inspect(tmp_path: Path, jid: str, **extra: str) -> PackageConfig:
    files = {"jid.yaml": jid, "model.py": HELLO_MODEL, **extra}
    return inspect_package(write_package_zip(tmp_path / "p.zip", files), LIMITS).config


def _error(tmp_path: Path, jid: str, **extra: str) -> PackageInvalidError:
    with pytest.raises(PackageInvalidError) as info:
        _inspect(tmp_path, jid, **extra)
    return info.value


def test_defaults_are_completed(tmp_path: Path) -> None:
    config = _inspect(tmp_path, "name: acme/hello\nmodel: model.py:Model\n")
    env = config.environment
    assert (env.python_version, env.architectures, env.python_packages, env.cuda, env.cudnn) == (
        "3.11",
        ("cpu",),
        (),
        "",
        "",
    )
    assert config.targets() == ["docker-cpu"]


def test_json_uses_the_original_field_names(tmp_path: Path) -> None:
    config = _inspect(tmp_path, jid_yaml(python_packages=["six==1.16.0"], examples=[{"input": {"text": "a"}}]))
    doc: dict[str, Any] = msgspec.json.decode(msgspec.json.encode(config))
    assert set(doc) == {"Name", "Model", "Environment", "Examples"}
    assert set(doc["Environment"]) == {
        "PythonVersion",
        "PythonRequirements",
        "PythonPackages",
        "SystemPackages",
        "Architectures",
        "CUDA",
        "CuDNN",
    }
    assert doc["Environment"]["PythonPackages"] == ["six==1.16.0"]
    assert doc["Examples"] == [{"Input": {"text": "a"}, "Output": None}]
    assert msgspec.json.decode(msgspec.json.encode(config), type=PackageConfig) == config


def test_yaml_syntax_error_has_line_and_column(tmp_path: Path) -> None:
    err = _error(tmp_path, "name: acme/hello\nmodel: model.py:Model\nenvironment:\n  python_packages: [six==1.16.0\n")
    assert err.code == Code.PACKAGE_YAML_SYNTAX
    assert "jid.yaml line 5, column 1" in err.message


def test_tab_indentation_is_a_syntax_error_at_its_place(tmp_path: Path) -> None:
    err = _error(tmp_path, "name: acme/hello\n\tmodel: model.py:Model\n")
    assert err.code == Code.PACKAGE_YAML_SYNTAX and "line 2, column 1" in err.message


def test_duplicate_keys_are_refused(tmp_path: Path) -> None:
    err = _error(tmp_path, "name: a\nmodel: model.py:Model\nname: b\n")
    assert err.code == Code.PACKAGE_YAML_SYNTAX and "line 3, column 1" in err.message and "'name'" in err.message


def test_wrong_type_names_the_key_and_place(tmp_path: Path) -> None:
    err = _error(tmp_path, "name: acme/hello\nmodel: model.py:Model\nenvironment:\n  python_packages: six==1.16.0\n")
    assert err.code == Code.PACKAGE_CONFIG_INVALID
    assert "line 4, column 20" in err.message and "environment.python_packages" in err.message


def test_float_version_gets_a_quoting_hint(tmp_path: Path) -> None:
    err = _error(tmp_path, "name: acme/hello\nmodel: model.py:Model\nenvironment:\n  python_version: 3.10\n")
    assert err.code == Code.PACKAGE_CONFIG_INVALID and "quote" in err.message and "line 4" in err.message


def test_unknown_key_is_refused_with_the_allowed_ones(tmp_path: Path) -> None:
    err = _error(tmp_path, "name: acme/hello\nmodel: model.py:Model\nenvironment:\n  python_package: [six==1]\n")
    assert err.code == Code.PACKAGE_CONFIG_INVALID
    assert "'python_package'" in err.message and "python_packages" in err.message and "line 4, column 3" in err.message


def test_missing_required_key(tmp_path: Path) -> None:
    err = _error(tmp_path, "name: acme/hello\n")
    assert err.code == Code.PACKAGE_CONFIG_INVALID and "`model`" in err.message


def test_empty_and_non_mapping_files(tmp_path: Path) -> None:
    assert _error(tmp_path, "").code == Code.PACKAGE_CONFIG_INVALID
    assert _error(tmp_path, "- a\n- b\n").code == Code.PACKAGE_CONFIG_INVALID


def test_null_environment_means_defaults(tmp_path: Path) -> None:
    config = _inspect(tmp_path, "name: acme/hello\nmodel: model.py:Model\nenvironment:\n")
    assert config.environment.architectures == ("cpu",)


def test_unpinned_python_packages_are_listed(tmp_path: Path) -> None:
    err = _error(tmp_path, jid_yaml(python_packages=["six", "numpy>=1.0", "attrs==23.1.0", "x==1.*"]))
    assert err.code == Code.PACKAGE_UNPINNED
    assert "'six'" in err.message and "'numpy>=1.0'" in err.message and "'x==1.*'" in err.message
    assert "attrs" not in err.message


def test_requirements_file_is_read_and_must_be_pinned(tmp_path: Path) -> None:
    config = _inspect(
        tmp_path, jid_yaml(python_requirements="./requirements.txt"), **{"requirements.txt": "# deps\nsix==1.16.0\n"}
    )
    assert config.environment.python_requirements == "requirements.txt"
    err = _error(
        tmp_path, jid_yaml(python_requirements="requirements.txt"), **{"requirements.txt": "six==1.16.0\nrequests\n"}
    )
    assert err.code == Code.PACKAGE_UNPINNED and "requirements.txt line 2" in err.message


def test_requirements_file_missing_or_with_options(tmp_path: Path) -> None:
    assert _error(tmp_path, jid_yaml(python_requirements="req.txt")).code == Code.PACKAGE_BAD_REQUIREMENTS
    err = _error(
        tmp_path,
        jid_yaml(python_requirements="requirements.txt"),
        **{"requirements.txt": "--index-url https://example.org/simple\nsix==1.16.0\n"},
    )
    assert err.code == Code.PACKAGE_BAD_REQUIREMENTS and "line 1" in err.message


def test_conflicting_pins(tmp_path: Path) -> None:
    err = _error(
        tmp_path,
        jid_yaml(python_packages=["six==1.16.0"], python_requirements="r.txt"),
        **{"r.txt": "six==1.15.0\n"},
    )
    assert err.code == Code.PACKAGE_CONFIG_INVALID and "six" in err.message


@pytest.mark.parametrize("model", ["model:Model", "model.py", "model.py:", "../model.py:Model", "my-model.py:Model"])
def test_model_spec_must_be_module_py_colon_class(tmp_path: Path, model: str) -> None:
    err = _error(tmp_path, jid_yaml(model=model))
    assert err.code == Code.PACKAGE_BAD_MODEL and "line 2" in err.message


def test_model_file_must_exist(tmp_path: Path) -> None:
    err = _error(tmp_path, jid_yaml(model="predict.py:Model"))
    assert err.code == Code.PACKAGE_BAD_MODEL and "predict.py" in err.message and "model.py" in err.message


def test_model_class_must_be_defined(tmp_path: Path) -> None:
    err = _error(tmp_path, jid_yaml(model="model.py:Predictor"))
    assert err.code == Code.PACKAGE_BAD_MODEL and "'Predictor'" in err.message


def test_model_syntax_error_names_the_line(tmp_path: Path) -> None:
    err = _error(tmp_path, jid_yaml(model="broken.py:Model"), **{"broken.py": "class Model:\n    def run(self)\n"})
    assert err.code == Code.PACKAGE_BAD_MODEL and "broken.py line 2" in err.message


def test_model_in_a_subfolder(tmp_path: Path) -> None:
    config = _inspect(tmp_path, jid_yaml(model="pkg/infer.py:Model"), **{"pkg/infer.py": HELLO_MODEL})
    assert (config.model_module(), config.model_class()) == ("pkg.infer", "Model")


def test_unknown_architecture(tmp_path: Path) -> None:
    err = _error(tmp_path, jid_yaml(architectures=["cpu", "tpu"]))
    assert err.code == Code.PACKAGE_UNKNOWN_ARCHITECTURE
    assert "'tpu'" in err.message and "line 6, column 5" in err.message
    assert _error(tmp_path, jid_yaml(architectures=[])).code == Code.PACKAGE_UNKNOWN_ARCHITECTURE


@pytest.mark.parametrize("name", ["Acme/Hello", "acme hello", "acme//hello", "-acme", ""])
def test_bad_names(tmp_path: Path, name: str) -> None:
    assert _error(tmp_path, jid_yaml(name=name)).code == Code.PACKAGE_BAD_NAME


def test_system_packages_cannot_inject_shell(tmp_path: Path) -> None:
    err = _error(tmp_path, jid_yaml(system_packages=["ffmpeg", "curl; rm -rf /"]))
    assert err.code == Code.PACKAGE_CONFIG_INVALID and "system_packages[1]" in err.message
    config = _inspect(tmp_path, jid_yaml(system_packages=["ffmpeg", "libgl1=1.6.0-1"]))
    assert config.environment.system_packages == ("ffmpeg", "libgl1=1.6.0-1")


def test_python_version_format(tmp_path: Path) -> None:
    assert _error(tmp_path, jid_yaml(python_version="2.7")).code == Code.PACKAGE_CONFIG_INVALID
    assert _inspect(tmp_path, jid_yaml(python_version="3.12")).environment.python_version == "3.12"


def test_examples_are_kept_and_input_names_checked(tmp_path: Path) -> None:
    config = _inspect(tmp_path, jid_yaml(examples=[{"input": {"text": "x", "n": 2}, "output": "y"}, {}]))
    assert [e.input for e in config.examples] == [{"text": "x", "n": 2}, {}]
    err = _error(tmp_path, jid_yaml(examples=[{"input": {"not-a-name": 1}}]))
    assert err.code == Code.PACKAGE_CONFIG_INVALID and "not-a-name" in err.message


def test_alias_expansion_bomb_is_refused(tmp_path: Path) -> None:
    lines = ["name: acme/hello", "model: model.py:Model", "a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 8)]
    err = _error(tmp_path, "\n".join(lines) + "\n")
    assert err.code == Code.PACKAGE_CONFIG_INVALID and "aliases" in err.message


def test_config_with_a_byte_order_mark_is_read(tmp_path: Path) -> None:
    assert _inspect(tmp_path, "\ufeff" + jid_yaml()).name == "premd-test/hello"
