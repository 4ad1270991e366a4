"""Parsing ``jid.yaml``: YAML syntax and types, every error placed at its line and column.

The file is strict: unknown keys are rejected (a misspelt ``python_package`` would otherwise be silently
ignored and the build would lack the package), values must have the documented types, and versions must
be strings (YAML reads ``3.10`` as the number 3.1).
"""

from __future__ import annotations

import re
from typing import Any

import msgspec
import yaml

from builder.package.errors import PackageInvalidError
from common.errors import Code
from common.package_config import ExampleValue

CONFIG_FILE = "jid.yaml"
MAX_CONFIG_BYTES = 256 * 1024
# An alias-heavy document ("billion laughs") expands exponentially when walked: cap the walk.
_MAX_NODES = 20000


class EnvironmentIn(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    python_version: str | None = None
    python_requirements: str | None = None
    python_packages: list[str] | None = None
    system_packages: list[str] | None = None
    architectures: list[str] | None = None
    cuda: str | None = None
    cudnn: str | int | None = None


class ExampleIn(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    input: dict[str, ExampleValue] | None = None
    output: str | None = None


class JidYaml(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``jid.yaml`` as written; ``name`` and ``model`` are required, everything else has a default."""

    name: str
    model: str
    environment: EnvironmentIn | None = None
    examples: list[ExampleIn] | None = None


KNOWN_KEYS = {
    "$": [f.name for f in msgspec.structs.fields(JidYaml)],
    "environment": [f.name for f in msgspec.structs.fields(EnvironmentIn)],
    "examples[]": [f.name for f in msgspec.structs.fields(ExampleIn)],
}

_PATH_TOKEN = re.compile(r"\.([A-Za-z_][A-Za-z0-9_]*)|\[(\d+)\]|\[\.\.\.\]")
_MSGSPEC_PATH = re.compile(r"^(?P<what>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)
_UNKNOWN_FIELD = re.compile(r"unknown field `([^`]*)`")


class ConfigNodes:
    """The composed YAML node tree, to find where a value (or key) sits in the file."""

    def __init__(self, root: yaml.Node | None) -> None:
        self.root = root

    def locate(self, path: str, key: str | None = None) -> tuple[int, int] | None:
        """1-based (line, column) of the value at msgspec *path* (``.environment.python_packages[0]``), or of
        *key* inside the mapping there."""
        node = self.root
        for match in _PATH_TOKEN.finditer(path):
            name, index = match.group(1), match.group(2)
            if isinstance(node, yaml.MappingNode) and name is not None:
                node = _child(node, name)
            elif isinstance(node, yaml.SequenceNode) and index is not None and int(index) < len(node.value):
                node = node.value[int(index)]
            else:
                break
        if node is None:
            return None
        if key is not None and isinstance(node, yaml.MappingNode):
            for key_node, _ in node.value:
                if isinstance(key_node, yaml.ScalarNode) and key_node.value == key:
                    return key_node.start_mark.line + 1, key_node.start_mark.column + 1
        return node.start_mark.line + 1, node.start_mark.column + 1


def _child(node: yaml.MappingNode, name: str) -> yaml.Node | None:
    for key_node, value_node in node.value:
        if isinstance(key_node, yaml.ScalarNode) and key_node.value == name:
            found: yaml.Node = value_node
            return found
    return None


def _at(position: tuple[int, int] | None) -> str:
    return f"{CONFIG_FILE} line {position[0]}, column {position[1]}" if position else CONFIG_FILE


def config_error(code: Code, nodes: ConfigNodes, path: str, message: str) -> PackageInvalidError:
    """An error about the value at *path* (``.environment.cuda``), placed at its line and column."""
    return PackageInvalidError(code, f"{_at(nodes.locate(path))}: {message}")


def _check_nodes(root: yaml.Node) -> None:
    """Duplicate keys (PyYAML keeps the last silently) and runaway alias expansion."""
    stack = [root]
    visited = 0
    while stack:
        node = stack.pop()
        visited += 1
        if visited > _MAX_NODES:
            raise PackageInvalidError(
                Code.PACKAGE_CONFIG_INVALID, f"{CONFIG_FILE} expands to more than {_MAX_NODES} values (aliases?)"
            )
        if isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for key_node, value_node in node.value:
                if isinstance(key_node, yaml.ScalarNode):
                    if key_node.value in seen:
                        pos = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
                        raise PackageInvalidError(
                            Code.PACKAGE_YAML_SYNTAX, f"{_at(pos)}: key {key_node.value!r} is given twice"
                        )
                    seen.add(key_node.value)
                stack.extend((key_node, value_node))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)


def _compose(text: str) -> tuple[Any, ConfigNodes]:
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        if root is not None:
            _check_nodes(root)
        data = loader.construct_document(root) if root is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "invalid YAML"
        where = _at((mark.line + 1, mark.column + 1) if mark is not None else None)
        context = f" ({exc.context})" if exc.context and exc.problem else ""
        raise PackageInvalidError(Code.PACKAGE_YAML_SYNTAX, f"{where}: {problem}{context}") from None
    except yaml.YAMLError as exc:
        raise PackageInvalidError(Code.PACKAGE_YAML_SYNTAX, f"{CONFIG_FILE}: {exc}") from None
    finally:
        loader.dispose()
    return data, ConfigNodes(root)


def _type_hint(path: str, what: str) -> str:
    if "got `float`" in what and path.endswith(("python_version", "cuda")):
        return ' (quote versions: "3.10", not 3.10, which YAML reads as the number 3.1)'
    if "got `str`" in what and path.endswith(("python_packages", "system_packages", "architectures", "examples")):
        return " (write a list: one `- item` per line, or [a, b])"
    return ""


def parse_jid_yaml(text: str) -> tuple[JidYaml, ConfigNodes]:
    """The typed content of ``jid.yaml``; PackageInvalidError with line and column on any problem."""
    data, nodes = _compose(text)
    if data is None:
        raise PackageInvalidError(
            Code.PACKAGE_CONFIG_INVALID, f"{CONFIG_FILE} is empty; it needs at least `name` and `model`"
        )
    if not isinstance(data, dict):
        raise config_error(
            Code.PACKAGE_CONFIG_INVALID,
            nodes,
            "",
            f"the top level must be a mapping of keys, not a {type(data).__name__}",
        )
    try:
        return msgspec.convert(data, JidYaml, strict=True), nodes
    except msgspec.ValidationError as exc:
        match = _MSGSPEC_PATH.match(str(exc))
        what = match.group("what") if match else str(exc)
        path = (match.group("path") if match else None) or ""
        unknown = _UNKNOWN_FIELD.search(what)
        shown = path.lstrip(".") or "the top level"
        if unknown is not None:
            section = re.sub(r"\[\d+\]", "[]", path.lstrip(".")) or "$"
            allowed = ", ".join(KNOWN_KEYS.get(section, []))
            where = _at(nodes.locate(path, key=unknown.group(1)))
            raise PackageInvalidError(
                Code.PACKAGE_CONFIG_INVALID,
                f"{where}: unknown key {unknown.group(1)!r} in {shown} (allowed: {allowed})",
            ) from None
        where = _at(nodes.locate(path))
        what = (
            what.replace(" | null", "")
            .replace("Expected", "expected")
            .replace("Object missing required field", "missing required key")
            .replace("`object`", "a mapping")
            .replace("`array`", "a list")
        )
        raise PackageInvalidError(
            Code.PACKAGE_CONFIG_INVALID, f"{where}: {shown}: {what}{_type_hint(path, what)}"
        ) from None
