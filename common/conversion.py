"""Decoded JSON converted into typed values, with the failing field found by walking the type, not the error text.

msgspec reports a conversion failure as one human sentence; its wording is not an API. When a conversion fails
we convert again piece by piece (each field of a Struct, each item of an array) down to the smallest piece that
fails, so the path, and whether the piece was missing, of the wrong JSON type or out of range, are known to us.
msgspec's sentence is kept only as ``detail``, for people.
"""

from __future__ import annotations

import types
import typing
from typing import Any, Literal, TypeVar

import msgspec
import msgspec.inspect as mi

T = TypeVar("T")

ProblemKind = Literal["missing", "type", "value"]

# JSON type names as people read them, per msgspec type description.
_JSON_NAMES: tuple[tuple[type[mi.Type], str], ...] = (
    (mi.BoolType, "boolean"),
    (mi.IntType, "integer"),
    (mi.FloatType, "number"),
    (mi.StrType, "string"),
    (mi.NoneType, "null"),
    (mi.ListType, "array"),
    (mi.TupleType, "array"),
    (mi.VarTupleType, "array"),
    (mi.SetType, "array"),
    (mi.FrozenSetType, "array"),
    (mi.DictType, "object"),
    (mi.StructType, "object"),
    (mi.TypedDictType, "object"),
    (mi.DataclassType, "object"),
)


class FieldProblem(msgspec.Struct, frozen=True, kw_only=True):
    """What is wrong, and where: ``path`` holds field names (as encoded) and array indexes from the root."""

    path: tuple[str | int, ...]
    kind: ProblemKind
    expected: str
    """The JSON type the piece should have had ("integer", "string or null", ...)."""
    got: str
    """The JSON type it had ("" when missing)."""
    detail: str
    """msgspec's own sentence about the piece: for people only, never parsed."""

    @property
    def dotted(self) -> str:
        """``modelInfo.memoryRequirements`` / ``items[2].id``: the path as people write it."""
        text = ""
        for part in self.path:
            text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
        return text


class ConversionError(Exception):
    def __init__(self, problem: FieldProblem) -> None:
        super().__init__(f"{problem.dotted or 'value'}: {problem.detail}")
        self.problem = problem


def convert(value: Any, type_: type[T], *, strict: bool = True) -> T:
    """``value`` as ``type_``; a failure raises ConversionError naming the smallest failing piece."""
    try:
        return msgspec.convert(value, type_, strict=strict)
    except msgspec.ValidationError as exc:
        raise ConversionError(locate(value, type_, str(exc), strict=strict)) from None


def locate(
    value: Any, type_: Any, detail: str, *, strict: bool = True, path: tuple[str | int, ...] = ()
) -> FieldProblem:
    """The smallest piece of ``value`` that does not convert to its part of ``type_``."""
    origin = typing.get_origin(type_)
    if origin is typing.Annotated:
        return locate(value, typing.get_args(type_)[0], detail, strict=strict, path=path)
    if origin in (typing.Union, types.UnionType):
        # The one member whose JSON type the value has is the one it was meant to be (a Struct for an object).
        fitting = [member for member in typing.get_args(type_) if _json_type_fits(value, member)]
        if len(fitting) == 1:
            return locate(value, fitting[0], detail, strict=strict, path=path)
    if isinstance(type_, type) and issubclass(type_, msgspec.Struct) and isinstance(value, dict):
        for field in msgspec.structs.fields(type_):
            if field.encode_name not in value:
                if field.required:
                    return _missing((*path, field.encode_name), field.type)
                continue
            found = _first_failure(value[field.encode_name], field.type, strict, (*path, field.encode_name))
            if found is not None:
                return found
    elif origin in (list, tuple, set, frozenset) and isinstance(value, list):
        args = typing.get_args(type_)
        item_type = args[0] if args else Any
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            item_types = list(args)
        else:
            item_types = [item_type] * len(value)
        for index, (item, item_t) in enumerate(zip(value, item_types, strict=False)):
            found = _first_failure(item, item_t, strict, (*path, index))
            if found is not None:
                return found
    elif origin is dict and isinstance(value, dict):
        _, value_type = typing.get_args(type_) or (Any, Any)
        for key, item in value.items():
            found = _first_failure(item, value_type, strict, (*path, str(key)))
            if found is not None:
                return found
    kind: ProblemKind = "value" if _json_type_fits(value, type_) else "type"
    return FieldProblem(path=path, kind=kind, expected=expected(type_), got=json_type(value), detail=detail)


def _missing(path: tuple[str | int, ...], type_: Any) -> FieldProblem:
    return FieldProblem(path=path, kind="missing", expected=expected(type_), got="", detail="missing")


def _first_failure(value: Any, type_: Any, strict: bool, path: tuple[str | int, ...]) -> FieldProblem | None:
    try:
        msgspec.convert(value, type_, strict=strict)
    except msgspec.ValidationError as exc:
        return locate(value, type_, str(exc), strict=strict, path=path)
    return None


def expected(type_: Any) -> str:
    """The JSON type(s) ``type_`` accepts, as people name them."""
    return _describe(mi.type_info(type_))


def _describe(info: mi.Type) -> str:
    if isinstance(info, mi.UnionType):
        names = dict.fromkeys(_describe(member) for member in info.types)
        return " or ".join(names)
    if isinstance(info, mi.LiteralType | mi.EnumType):
        return "one of " + ", ".join(repr(v) for v in _literal_values(info))
    for kind, name in _JSON_NAMES:
        if isinstance(info, kind):
            return name
    return "value"


def _literal_values(info: mi.LiteralType | mi.EnumType) -> list[Any]:
    if isinstance(info, mi.LiteralType):
        return list(info.values)
    return [member.value for member in info.cls]


def _json_type_fits(value: Any, type_: Any) -> bool:
    """Whether ``value`` has a JSON type ``type_`` accepts (so a failure is about its value, not its type)."""
    return json_type(value) in expected(type_).split(" or ") or expected(type_).startswith("one of")


def json_type(value: Any) -> str:
    match value:
        case None:
            return "null"
        case bool():
            return "boolean"
        case int():
            return "integer"
        case float():
            return "number"
        case str():
            return "string"
        case list() | tuple():
            return "array"
        case dict():
            return "object"
    return type(value).__name__
