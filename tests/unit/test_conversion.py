"""Field-by-field conversion: the failing piece is found from the type, whatever msgspec's sentence says."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
import pytest

from common.conversion import ConversionError, FieldProblem, convert, expected


class Inner(msgspec.Struct, frozen=True):
    image: str
    size: int = 0


class Outer(msgspec.Struct, frozen=True, rename="camel"):
    service_id: str
    port: Annotated[int, msgspec.Meta(ge=1, le=65535)] | None = None
    images: Inner | None = None
    tags: list[str] = []
    mode: Literal["cpu", "gpu"] = "cpu"


def problem(value: object) -> FieldProblem:
    with pytest.raises(ConversionError) as caught:
        convert(value, Outer)
    return caught.value.problem


def test_a_missing_field_is_reported_by_its_encoded_name() -> None:
    found = problem({})
    assert (found.path, found.kind, found.expected, found.got) == (("serviceId",), "missing", "string", "")


def test_a_wrong_json_type_names_what_was_expected_and_what_came() -> None:
    found = problem({"serviceId": "a", "port": "80"})
    assert (found.path, found.kind, found.expected, found.got) == (("port",), "type", "integer or null", "string")


def test_an_out_of_range_value_is_a_value_problem_with_msgspecs_words_as_detail() -> None:
    found = problem({"serviceId": "a", "port": 70000})
    assert (found.path, found.kind) == (("port",), "value")
    assert found.detail  # for people; its wording is msgspec's and not checked


def test_nested_structs_behind_an_optional_and_array_items_are_walked() -> None:
    nested = problem({"serviceId": "a", "images": {"size": 1}})
    assert (nested.dotted, nested.kind) == ("images.image", "missing")
    item = problem({"serviceId": "a", "tags": ["x", 3]})
    assert (item.path, item.dotted, item.kind, item.got) == (("tags", 1), "tags[1]", "type", "integer")


def test_literals_are_described_by_their_values() -> None:
    found = problem({"serviceId": "a", "mode": "tpu"})
    assert (found.path, found.kind, found.expected) == (("mode",), "value", "one of 'cpu', 'gpu'")


def test_a_good_value_converts() -> None:
    assert convert({"serviceId": "a", "port": 8000}, Outer) == Outer(service_id="a", port=8000)
    assert expected(dict[str, int]) == "object"
