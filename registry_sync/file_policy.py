"""Which ``file://`` registries may be read: those under PREMD_REGISTRY_FILE_DIR, and those PREM_REGISTRY_URL
named when premd started. Anything else would let whoever can add a registry (an API or bus client) make
premd read any file its user can read (and show whether it exists, or parts of it, in the error)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from urllib.parse import unquote, urlsplit

from common.settings import Settings


def file_path(url: str) -> str:
    return unquote(urlsplit(url).path)


def _real(path: str) -> str | None:
    try:
        return os.path.realpath(path)
    except ValueError:  # a NUL byte: no such file can exist
        return None


class FilePolicy:
    def __init__(self, allowed_dir: str | None, given: Iterable[str]) -> None:
        self.allowed_dir = os.path.realpath(allowed_dir) if allowed_dir else None
        self.given = frozenset(_real(file_path(u)) for u in given if u.lower().startswith("file:")) - {None}
        """Real paths of the file registries the operator configured at start (trusted as given)."""

    @classmethod
    def of(cls, settings: Settings) -> FilePolicy:
        return cls(settings.registry_file_dir, settings.registry_urls)

    def refusal(self, real_path: str) -> str | None:
        """Why the file at ``real_path`` (symbolic links resolved) may not be read; None when it may."""
        real = _real(real_path)
        if real is None:
            return f"invalid path {real_path!r}"
        real_path = real
        if real_path in self.given:
            return None
        if self.allowed_dir is not None and os.path.commonpath((self.allowed_dir, real_path)) == self.allowed_dir:
            return None
        where = f"under {self.allowed_dir}" if self.allowed_dir else "when PREMD_REGISTRY_FILE_DIR is unset"
        return (
            f"file registries are read only {where} or when given in PREM_REGISTRY_URL at start; {real_path} is neither"
        )
