"""JSON on the bus and in KV: one encoder, and one decoder per type, made once and reused.

A ``msgspec.json.Decoder`` holds its type's compiled description; building one per message would redo that work.
"""

from __future__ import annotations

import functools
import typing
from collections.abc import Hashable
from typing import Any, TypeVar

import msgspec

T = TypeVar("T")

_ENCODER = msgspec.json.Encoder()


def encode(value: Any) -> bytes:
    return _ENCODER.encode(value)


@functools.cache
def _decoder(type_: Any) -> msgspec.json.Decoder[Any]:
    return msgspec.json.Decoder(type_)


def decoder(type_: type[T]) -> msgspec.json.Decoder[T]:
    """The one decoder for ``type_``."""
    return _decoder(typing.cast(Hashable, type_))


def decode(data: bytes | str, type_: type[T]) -> T:
    return decoder(type_).decode(data)


_ANY = msgspec.json.Decoder()


def decode_any(data: bytes | str) -> Any:
    """JSON of any shape (objects as dicts), for callers that validate the pieces themselves."""
    return _ANY.decode(data)
