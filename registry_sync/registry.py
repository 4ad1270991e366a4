"""One configured registry in memory: its last good content, its validators and its health."""

from __future__ import annotations

import asyncio
import hashlib
import importlib.resources
from dataclasses import dataclass, field
from datetime import UTC, datetime

import msgspec

from common.messages import CatalogEntry, RegistryHealth, RegistryStatus, SkippedEntry
from registry_sync.fetch import Fetcher, FetchError, NotModified
from registry_sync.merge import encode_entries
from registry_sync.state import ContentInfo
from registry_sync.validate import DocumentError, Parsed, parse_document

BUNDLED_DATE = "2023-11-23"
"""Commit date of the prem-registry ``main`` manifests.json shipped in registry_sync/bundled/main.json."""
BUNDLED_AT = datetime(2023, 11, 23, tzinfo=UTC).timestamp()


def bundled_document() -> bytes:
    return (importlib.resources.files("registry_sync") / "bundled" / "main.json").read_bytes()


class Failed(msgspec.Struct, frozen=True):
    error: str


class Unchanged(msgspec.Struct, frozen=True, kw_only=True):
    etag: str | None = None
    last_modified: str | None = None
    validators: bool = False
    """True when the answer carried (possibly new) validators for the same content."""


class Loaded(msgspec.Struct, frozen=True):
    """A validated document and each entry's wire form (encoded once per content, not once per publish)."""

    parsed: Parsed
    encoded: dict[str, bytes]


class Fresh(msgspec.Struct, frozen=True, kw_only=True):
    body: bytes
    sha256: str
    loaded: Loaded
    etag: str | None = None
    last_modified: str | None = None


Outcome = Failed | Unchanged | Fresh


def digest_and_parse(body: bytes, origin: str, known_sha256: str | None) -> tuple[str, Loaded | None]:
    """CPU work of a fetched document (run in a thread): its digest, and its entries unless already known."""
    sha = hashlib.sha256(body).hexdigest()
    if sha == known_sha256:
        return sha, None
    parsed = parse_document(body, origin)
    return sha, Loaded(parsed, encode_entries(parsed.entries))


@dataclass(slots=True)
class Registry:
    url: str
    entries: list[CatalogEntry] = field(default_factory=list)
    encoded: dict[str, bytes] = field(default_factory=dict)
    skipped: list[SkippedEntry] = field(default_factory=list)
    skipped_total: int = 0
    unsupported: int = 0
    status: RegistryHealth = "pending"
    error: str | None = None
    fetched_at: float | None = None
    checked_at: float | None = None
    etag: str | None = None
    last_modified: str | None = None
    sha256: str | None = None
    size: int = 0
    bundled: bool = False
    checks_started: int = 0
    check_applied: int = 0
    """Sequence of the last check applied: an outcome older than it is stale (slow fetch, concurrent refresh)."""

    def load(self, loaded: Loaded, info: ContentInfo, bundled: bool = False) -> None:
        """Take a validated document as this registry's last good content."""
        parsed = loaded.parsed
        self.entries, self.skipped, self.unsupported = parsed.entries, parsed.skipped, parsed.unsupported
        self.skipped_total = parsed.skipped_total
        self.encoded = loaded.encoded
        self.sha256, self.size, self.fetched_at = info.sha256, info.size, info.fetched_at
        self.etag, self.last_modified = info.etag, info.last_modified
        self.bundled = bundled

    def begin_check(self) -> int:
        """A sequence number for a check about to start (pass it to ``is_current`` with its outcome)."""
        self.checks_started += 1
        return self.checks_started

    def is_current(self, check: int) -> bool:
        """True, and now the latest, unless a check started after ``check`` was applied first."""
        if check <= self.check_applied:
            return False
        self.check_applied = check
        return True

    def info(self) -> ContentInfo:
        return ContentInfo(
            url=self.url,
            sha256=self.sha256 or "",
            size=self.size,
            fetched_at=self.fetched_at or 0.0,
            etag=self.etag,
            last_modified=self.last_modified,
        )

    def apply(self, outcome: Outcome, now: float) -> ContentInfo | None:
        """Record a check's outcome; returns the content record to persist, if it changed."""
        self.checked_at = now
        match outcome:
            case Failed(error=error):
                self.status, self.error = "error", error
                return None
            case Unchanged() as same:
                self.status, self.error = "ok", None
                if not same.validators or (same.etag, same.last_modified) == (self.etag, self.last_modified):
                    return None
                self.etag, self.last_modified = same.etag, same.last_modified
                return self.info()
            case Fresh() as fresh:
                self.status, self.error = "ok", None
                info = ContentInfo(
                    url=self.url,
                    sha256=fresh.sha256,
                    size=len(fresh.body),
                    fetched_at=now,
                    etag=fresh.etag,
                    last_modified=fresh.last_modified,
                )
                self.load(fresh.loaded, info)
                return info

    def to_status(self) -> RegistryStatus:
        return RegistryStatus(
            url=self.url,
            status=self.status,
            error=self.error,
            fetched_at=self.fetched_at,
            etag=self.etag,
            last_modified=self.last_modified,
            count=len(self.entries),
            skipped=self.skipped,
            skipped_total=self.skipped_total,
            bundled=self.bundled,
            bundled_date=BUNDLED_DATE if self.bundled else None,
            unsupported=self.unsupported,
            checked_at=self.checked_at,
        )


async def check(fetcher: Fetcher, url: str, registry: Registry | None) -> Outcome:
    """Fetch ``url`` (conditionally when live content is known) and validate what came back. Never raises."""
    known = registry if registry is not None and not registry.bundled and registry.sha256 else None
    try:
        result = await fetcher.fetch(url, known.etag if known else None, known.last_modified if known else None)
    except FetchError as exc:
        return Failed(str(exc))
    if isinstance(result, NotModified):
        return Unchanged()
    try:
        sha, loaded = await asyncio.to_thread(digest_and_parse, result.body, url, known.sha256 if known else None)
    except DocumentError as exc:
        return Failed(str(exc))
    if loaded is None:
        return Unchanged(etag=result.etag, last_modified=result.last_modified, validators=True)
    return Fresh(body=result.body, sha256=sha, loaded=loaded, etag=result.etag, last_modified=result.last_modified)
