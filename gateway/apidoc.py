"""Route documentation attached to handlers, from which /openapi.json is generated (never hand-written).

A handler says what it takes and returns as msgspec types; the OpenAPI generator walks the router.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

ATTR = "__premd_apidoc__"


@dataclass(frozen=True, slots=True)
class ApiDoc:
    summary: str
    body: Any = None
    """A msgspec type (Struct, list[Struct], ...) for the JSON request body."""
    response: Any = None
    """A msgspec type for the 200 JSON response; None for non-JSON (streams)."""
    content_type: str = "application/json"
    query: dict[str, str] = field(default_factory=dict)
    """Query parameter name -> description."""
    tags: tuple[str, ...] = ()
    errors: dict[int, str] = field(default_factory=dict)
    """Status -> description of the documented error responses."""
    # --- packages: pipeline ---
    upload_field: str | None = None
    """A multipart/form-data body with this one file field (instead of a JSON ``body``)."""
    also_ok: tuple[int, ...] = ()
    """Other success statuses answering the same ``response`` (202 Accepted)."""


def documented(summary: str, **kwargs: Any) -> Callable[[F], F]:
    doc = ApiDoc(summary, **kwargs)

    def mark(handler: F) -> F:
        setattr(handler, ATTR, doc)
        return handler

    return mark


def doc_of(handler: object) -> ApiDoc | None:
    found = getattr(handler, ATTR, None)
    return found if isinstance(found, ApiDoc) else None
