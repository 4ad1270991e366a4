"""From a parsed ``jid.yaml`` to a complete, checked ``PackageConfig``.

Defaults as the original (with its defects fixed): Python 3.11 (the original's 3.8 is past end of life),
architectures ``[cpu]`` (a GPU image needs a CUDA base image the operator configured, so GPU is asked for, not
assumed), CUDA/cuDNN chosen from the torch / tensorflow pins of both ``python_packages`` and the requirements
file (the original looked at ``python_packages`` only).
"""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Callable

from builder.package import compat
from builder.package.errors import PackageInvalidError
from builder.package.jid_yaml import ConfigNodes, JidYaml, config_error
from builder.package.requirements import Pin, RequirementsProblem, parse_pin, parse_requirements
from common.errors import Code
from common.package_config import (
    ARCHITECTURES,
    DEFAULT_ARCHITECTURES,
    DEFAULT_PYTHON_VERSION,
    Environment,
    Example,
    PackageConfig,
)

MAX_REQUIREMENTS_BYTES = 256 * 1024
MAX_MODEL_SOURCE_BYTES = 4 * 1024 * 1024
# Docker's repository path grammar: lower-case components joined by '/', separators '.', '_', '__', '-'.
_NAME = re.compile(r"^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*$")
_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_MODEL = re.compile(rf"^(?P<module>(?:{_IDENT}/)*{_IDENT})\.py:(?P<cls>{_IDENT})$")
_PYTHON = re.compile(r"^3\.\d{1,2}$")
_CUDA = re.compile(r"^\d{1,2}\.\d{1,2}(\.\d{1,3})?$")
_CUDNN = re.compile(r"^\d{1,2}$")
_APT = re.compile(r"^[a-z0-9][a-z0-9+.-]+(=[A-Za-z0-9.+~:-]+)?$")

ReadText = Callable[[str, int], str]


def _check_name(jid: JidYaml, nodes: ConfigNodes) -> str:
    if not _NAME.match(jid.name) or len(jid.name) > 200:
        raise config_error(
            Code.PACKAGE_BAD_NAME,
            nodes,
            ".name",
            f"name {jid.name!r} is not an image repository path: lower-case letters, digits and"
            " '.', '_', '-' separators, components joined by '/', e.g. acme/hello-model",
        )
    return jid.name


def _top_level_names(tree: ast.Module) -> set[str] | None:
    """Names a module defines at its top level; None when a star import makes that unknowable."""
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            for alias in node.names:
                if alias.name == "*":
                    return None
                names.add(alias.asname or alias.name.split(".")[0])
    return names


def _check_model(jid: JidYaml, nodes: ConfigNodes, files: set[str], read_text: ReadText, python: str) -> str:
    match = _MODEL.match(jid.model)
    if match is None:
        raise config_error(
            Code.PACKAGE_BAD_MODEL,
            nodes,
            ".model",
            f"model {jid.model!r} is not <module>.py:<Class> (e.g. predict.py:Model; the module path is relative"
            " to the package root, its parts valid Python names)",
        )
    module_file = match.group("module") + ".py"
    if module_file not in files:
        near = sorted(f for f in files if f.endswith(".py"))[:10]
        raise config_error(
            Code.PACKAGE_BAD_MODEL,
            nodes,
            ".model",
            f"model names {module_file}, which is not in the package"
            + (f" (Python files there: {', '.join(near)})" if near else " (it has no Python files)"),
        )
    source = read_text(module_file, MAX_MODEL_SOURCE_BYTES)
    try:
        tree = ast.parse(source, filename=module_file)
    except SyntaxError as exc:
        if compat.version_key(python) > sys.version_info[:2]:
            return jid.model  # newer syntax than this interpreter knows: the image's Python judges it
        raise PackageInvalidError(
            Code.PACKAGE_BAD_MODEL, f"{module_file} line {exc.lineno}, column {exc.offset}: {exc.msg}"
        ) from None
    names = _top_level_names(tree)
    if names is not None and match.group("cls") not in names:
        raise config_error(
            Code.PACKAGE_BAD_MODEL,
            nodes,
            ".model",
            f"{module_file} defines no {match.group('cls')!r} at its top level (model is {jid.model!r})",
        )
    return jid.model


def _pins_of_packages(packages: list[str], nodes: ConfigNodes) -> list[Pin]:
    pins, unpinned = [], []
    for package in packages:
        pin = parse_pin(package)
        if pin is None or package.strip().startswith("-"):
            unpinned.append(package)
        else:
            pins.append(pin)
    if unpinned:
        raise config_error(
            Code.PACKAGE_UNPINNED,
            nodes,
            ".environment.python_packages",
            "all Python packages must have pinned versions, e.g. mypkg==1.0.0; these are not pinned: "
            + ", ".join(repr(p) for p in unpinned),
        )
    return pins


def _pins_of_requirements(path: str, nodes: ConfigNodes, files: set[str], read_text: ReadText) -> tuple[str, list[Pin]]:
    normalised = path.removeprefix("./")
    if normalised not in files:
        raise config_error(
            Code.PACKAGE_BAD_REQUIREMENTS,
            nodes,
            ".environment.python_requirements",
            f"python_requirements names {path!r}, which is not in the package",
        )
    try:
        return normalised, parse_requirements(read_text(normalised, MAX_REQUIREMENTS_BYTES))
    except RequirementsProblem as exc:
        code = Code.PACKAGE_UNPINNED if exc.unpinned else Code.PACKAGE_BAD_REQUIREMENTS
        raise PackageInvalidError(code, f"{normalised} line {exc.line}: {exc}") from None


def _merge_pins(pins: list[Pin], nodes: ConfigNodes) -> dict[str, Pin]:
    by_name: dict[str, Pin] = {}
    for pin in pins:
        other = by_name.get(pin.name)
        if other is not None and other.version != pin.version:
            raise config_error(
                Code.PACKAGE_CONFIG_INVALID,
                nodes,
                ".environment",
                f"{pin.name} is pinned twice, to {other.version} and {pin.version}",
            )
        by_name[pin.name] = pin
    return by_name


def _check_architectures(values: list[str] | None, nodes: ConfigNodes) -> tuple[str, ...]:
    if values is None:
        return DEFAULT_ARCHITECTURES
    path = ".environment.architectures"
    if not values:
        raise config_error(Code.PACKAGE_UNKNOWN_ARCHITECTURE, nodes, path, "architectures is empty; use cpu and/or gpu")
    for i, arch in enumerate(values):
        if arch not in ARCHITECTURES:
            raise config_error(
                Code.PACKAGE_UNKNOWN_ARCHITECTURE,
                nodes,
                f"{path}[{i}]",
                f"unknown architecture {arch!r}; known: {', '.join(ARCHITECTURES)}",
            )
    if len(set(values)) != len(values):
        raise config_error(Code.PACKAGE_CONFIG_INVALID, nodes, path, "an architecture is listed twice")
    return tuple(values)


def _check_examples(jid: JidYaml, nodes: ConfigNodes) -> tuple[Example, ...]:
    examples = []
    for i, example in enumerate(jid.examples or []):
        for key in example.input or {}:
            if not re.fullmatch(_IDENT, key):
                raise config_error(
                    Code.PACKAGE_CONFIG_INVALID,
                    nodes,
                    f".examples[{i}].input",
                    f"input name {key!r} is not a valid Python argument name",
                )
        examples.append(Example(input=dict(example.input or {}), output=example.output))
    return tuple(examples)


def complete_config(
    jid: JidYaml, nodes: ConfigNodes, files: set[str], read_text: ReadText
) -> tuple[PackageConfig, list[str]]:
    """The completed config and any warnings; PackageInvalidError naming the first problem."""
    env = jid.environment
    name = _check_name(jid, nodes)
    python = (env.python_version if env else None) or DEFAULT_PYTHON_VERSION
    if not _PYTHON.match(python):
        raise config_error(
            Code.PACKAGE_CONFIG_INVALID,
            nodes,
            ".environment.python_version",
            f'python_version {python!r} is not a Python 3 major.minor version such as "3.11"',
        )
    model = _check_model(jid, nodes, files, read_text, python)
    packages = list(env.python_packages or []) if env else []
    pins = _pins_of_packages(packages, nodes)
    requirements = ""
    if env and env.python_requirements:
        requirements, req_pins = _pins_of_requirements(env.python_requirements, nodes, files, read_text)
        pins += req_pins
    by_name = _merge_pins(pins, nodes)
    system = list(env.system_packages or []) if env else []
    for i, package in enumerate(system):
        if not _APT.match(package):
            raise config_error(
                Code.PACKAGE_CONFIG_INVALID,
                nodes,
                f".environment.system_packages[{i}]",
                f"system_packages[{i}] {package!r} is not a Debian package name (optionally name=version)",
            )
    architectures = _check_architectures(env.architectures if env else None, nodes)
    cuda = (env.cuda if env else None) or ""
    cudnn = str(env.cudnn) if env and env.cudnn is not None else ""
    if cuda and not _CUDA.match(cuda):
        raise config_error(
            Code.PACKAGE_CONFIG_INVALID, nodes, ".environment.cuda", f'cuda {cuda!r} is not a version like "12.1"'
        )
    if cudnn and not _CUDNN.match(cudnn):
        raise config_error(
            Code.PACKAGE_CONFIG_INVALID,
            nodes,
            ".environment.cudnn",
            f"cudnn {cudnn!r} is not a cuDNN major version like 8 (the number in nvidia/cuda's -cudnn<N> tags)",
        )
    compat.check_python(python, by_name)
    warnings: list[str] = []
    if "gpu" in architectures:
        choice = compat.choose_cuda(by_name, cuda, cudnn)
        cuda, cudnn, warnings = choice.cuda, choice.cudnn, choice.warnings
    config = PackageConfig(
        name=name,
        model=model,
        environment=Environment(
            python_version=python,
            python_requirements=requirements,
            python_packages=tuple(packages),
            system_packages=tuple(system),
            architectures=architectures,
            cuda=cuda,
            cudnn=cudnn,
        ),
        examples=_check_examples(jid, nodes),
    )
    return config, warnings
