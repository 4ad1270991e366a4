"""Registry documents to catalog entries: pure functions, no I/O.

A document must be a JSON array. Each element is checked on its own: a bad one is skipped with its index,
its id (when it has a usable one) and the reason, and never affects the others.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import msgspec

from common import codec
from common.conversion import ConversionError, FieldProblem, convert
from common.manifest import MANIFEST_KEYS, SERVICE_ID_PATTERN, SERVICE_ID_RE, Manifest
from common.messages import CatalogEntry, SkippedEntry

BINARY = "binary"

REGISTRY_REQUIRED = ("id", "name", "interfaces")
"""Keys every registry entry needs; docker services also need DOCKER_REQUIRED."""
DOCKER_REQUIRED = ("dockerImages", "defaultPort", "defaultExternalPort")
CUSTOM_REQUIRED = ("id", "name", "modelInfo", "interfaces", "dockerImages", "defaultPort", "defaultExternalPort")
"""premd's ServiceInput: what POST /v1/services/ requires."""


class DocumentError(Exception):
    """The whole document is unusable (not JSON, not an array): the registry keeps its last good content."""


class EntryError(Exception):
    """One manifest is invalid: ``field`` is the offending key path (``dockerImages.cpu.image``)."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}" if field else reason)
        self.field = field
        self.reason = reason


MAX_REPORTED_SKIPS = 100
"""Skipped entries reported one by one; past that only counted (a garbage document must not make a huge report)."""


class Parsed(msgspec.Struct, frozen=True, kw_only=True):
    """One registry document, validated."""

    entries: list[CatalogEntry]
    skipped: list[SkippedEntry]
    """The first MAX_REPORTED_SKIPS skipped entries."""
    skipped_total: int
    unsupported: int
    """Entries kept that premd cannot run (desktop-only binary services)."""


def parse_document(data: bytes, origin: str) -> Parsed:
    """Validate a whole registry document; raises DocumentError when it is not a JSON array."""
    try:
        items = codec.decode_any(data)
    except msgspec.DecodeError as exc:
        raise DocumentError(f"not JSON: {exc}") from None
    if not isinstance(items, list):
        raise DocumentError(f"not a JSON array (got {_json_type(items)})")
    entries: list[CatalogEntry] = []
    skipped: list[SkippedEntry] = []
    skipped_total = 0
    first_index: dict[str, int] = {}
    unsupported = 0
    for index, item in enumerate(items):
        try:
            entry = check_entry(item, origin, REGISTRY_REQUIRED)
            if entry.manifest.id in first_index:
                raise EntryError("id", f"duplicate of entry {first_index[entry.manifest.id]} in the same registry")
        except EntryError as exc:
            skipped_total += 1
            if len(skipped) < MAX_REPORTED_SKIPS:
                skipped.append(SkippedEntry(index=index, id=usable_id(item), reason=str(exc)))
            continue
        first_index[entry.manifest.id] = index
        unsupported += entry.manifest.docker_images is None
        entries.append(entry)
    return Parsed(entries=entries, skipped=skipped, skipped_total=skipped_total, unsupported=unsupported)


def check_entry(item: object, origin: str, required: Collection[str]) -> CatalogEntry:
    """One manifest as a catalog entry, or EntryError naming the field at fault.

    Docker services (no ``serviceType``, or ``"docker"``) need DOCKER_REQUIRED. Desktop-only binary services
    are kept without them: the catalog lists them as unsupported, where premd answered the whole listing with a 500.
    """
    if not isinstance(item, dict):
        raise EntryError("", f"expected a JSON object, got {_json_type(item)}")
    if "id" not in item:
        raise EntryError("id", "missing")
    raw_id = item["id"]
    if not isinstance(raw_id, str):
        raise EntryError("id", f"expected a string, got {_json_type(raw_id)}")
    if not SERVICE_ID_RE.match(raw_id):
        raise EntryError("id", f"{raw_id!r} is not a valid service id (must match {SERVICE_ID_PATTERN})")
    for key in required:
        if key not in item:
            raise EntryError(key, "missing")
    try:
        manifest = convert(item, Manifest)
    except ConversionError as exc:
        raise _entry_error(exc.problem) from None
    if manifest.service_type != BINARY:
        for key in DOCKER_REQUIRED:
            if item.get(key) is None:
                raise EntryError(key, 'missing (required unless serviceType is "binary")')
    images = manifest.docker_images
    if images is not None and images.cpu is None and images.gpu is None:
        raise EntryError("dockerImages", "has neither a cpu nor a gpu image")
    memory = manifest.model_info.get("memoryRequirements")
    if memory is not None and (not isinstance(memory, int) or isinstance(memory, bool) or memory < 0):
        raise EntryError("modelInfo.memoryRequirements", f"expected a whole number of MiB, got {memory!r}")
    extra = {key: value for key, value in item.items() if key not in MANIFEST_KEYS}
    return CatalogEntry(manifest=manifest, origin=origin, extra=extra)


def usable_id(item: object) -> str | None:
    """The entry's id when it is a string (for reports), even if the entry is otherwise invalid."""
    if isinstance(item, dict):
        value = item.get("id")
        if isinstance(value, str):
            return value
    return None


def _entry_error(problem: FieldProblem) -> EntryError:
    if problem.kind == "missing":
        return EntryError(problem.dotted, "missing")
    if problem.kind == "type":
        return EntryError(problem.dotted, f"expected {_article(problem.expected)}, got {_article(problem.got)}")
    return EntryError(problem.dotted, problem.detail[:1].lower() + problem.detail[1:])


def _article(json_name: str) -> str:
    # "an integer", "a string or null": the wording _json_type uses for the document's own checks
    return ("an " if json_name[:1] in "aeiou" else "a ") + json_name if json_name != "null" else json_name


def _json_type(value: Any) -> str:
    match value:
        case None:
            return "null"
        case bool():
            return "a boolean"
        case int() | float():
            return "a number"
        case str():
            return "a string"
        case list():
            return "an array"
        case dict():
            return "an object"
    return type(value).__name__
