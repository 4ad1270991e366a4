"""``inspect_package``: everything the upload must prove before answering, in one synchronous pass."""

from __future__ import annotations

from pathlib import Path

import msgspec

from builder.package.archive import PackageZip
from builder.package.completion import complete_config
from builder.package.errors import PackageInvalidError
from builder.package.jid_yaml import CONFIG_FILE, MAX_CONFIG_BYTES, parse_jid_yaml
from builder.package.limits import PackageLimits
from builder.package.manifest import ID_SCHEME, PackageFile, package_id
from common.errors import Code
from common.package_config import PackageConfig


class InspectedPackage(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    """64 hex digits: sha256 of the content manifest (builder/package/manifest.py)."""
    config: PackageConfig
    """The completed configuration."""
    files: list[PackageFile]
    """Regular files, sorted by path."""
    warnings: list[str] = []
    id_scheme: str = ID_SCHEME


def inspect_package(zip_path: Path, limits: PackageLimits) -> InspectedPackage:
    """Validate a package zip and compute its ID and completed config (run it in a thread: it reads the whole
    zip). Raises PackageInvalidError with a ``Code.PACKAGE_*`` code and a message naming the problem."""
    with PackageZip(zip_path, limits) as pz:
        if CONFIG_FILE not in pz.by_path:  # known from the central directory: no need to decompress first
            nested = sorted(p for p in pz.by_path if p.endswith("/" + CONFIG_FILE))
            hint = (
                f"; found {nested[0]}: zip the folder's contents, not the folder itself"
                if nested
                else "; it holds name, model and environment"
            )
            raise PackageInvalidError(Code.PACKAGE_NO_CONFIG, f"the zip has no {CONFIG_FILE} at its root{hint}")
        files = pz.read_all()
        paths = {f.path for f in files}
        jid, nodes = parse_jid_yaml(pz.read_text(CONFIG_FILE, MAX_CONFIG_BYTES))
        config, warnings = complete_config(jid, nodes, paths, pz.read_text)
    files.sort(key=lambda f: f.path.encode())
    return InspectedPackage(id=package_id(files), config=config, files=files, warnings=warnings)
