"""Size limits a package zip must respect (zip bomb and upload guards); the values are settings."""

from __future__ import annotations

import msgspec

from common.settings import Settings

# An entry smaller than this is never called a bomb by its ratio: the total limit bounds such entries anyway,
# and small highly compressible files (a sparse JSON, a run of zeros) are common in real packages.
RATIO_FLOOR_BYTES = 1024 * 1024


class PackageLimits(msgspec.Struct, frozen=True, kw_only=True):
    max_upload_bytes: int
    max_uncompressed_bytes: int
    max_entries: int
    max_ratio: int

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> PackageLimits:
        """The limits of *settings*, or the settings' defaults."""
        settings = settings if settings is not None else Settings()
        return cls(
            max_upload_bytes=settings.package_max_upload_bytes,
            max_uncompressed_bytes=settings.package_max_uncompressed_bytes,
            max_entries=settings.package_max_entries,
            max_ratio=settings.package_max_ratio,
        )
