"""The package ID: a sha256 over a normalised manifest of the package's files (docs/packages.md states it).

Manifest = ``premd-package-v1\\n`` followed by one line per regular file, in the order of the paths' UTF-8 bytes:
``<path>\\0<x>\\0<size>\\0<sha256 hex>\\n`` where ``x`` is ``1`` for an executable file and ``0`` otherwise.
Paths are relative, '/'-separated and NFC-normalised; folders, timestamps, compression and file order in the zip
do not count, so the same files zipped differently get the same ID, and any change of content, path or exec bit
gives another.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import msgspec

ID_SCHEME = "premd-package-v1"


class PackageFile(msgspec.Struct, frozen=True, kw_only=True):
    """One regular file of a package, as hashed into its ID."""

    path: str
    size: int
    sha256: str
    executable: bool


def manifest_bytes(files: Iterable[PackageFile]) -> bytes:
    lines = [f"{ID_SCHEME}\n".encode()]
    for f in sorted(files, key=lambda f: f.path.encode()):
        lines.append(f"{f.path}\0{1 if f.executable else 0}\0{f.size}\0{f.sha256}\n".encode())
    return b"".join(lines)


def package_id(files: Iterable[PackageFile]) -> str:
    return hashlib.sha256(manifest_bytes(files)).hexdigest()
