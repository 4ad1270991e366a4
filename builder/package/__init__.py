"""Model packages: a zip with ``jid.yaml`` at its root, checked, content-addressed and completed.

Pure code (no bus, no Docker): the builder calls ``inspect_package`` in a thread on each upload and
``extract_package`` before a build.
"""

from builder.package.archive import extract_package
from builder.package.errors import PackageInvalidError
from builder.package.inspection import InspectedPackage, inspect_package
from builder.package.limits import PackageLimits
from builder.package.manifest import ID_SCHEME, PackageFile, manifest_bytes, package_id

__all__ = [
    "ID_SCHEME",
    "InspectedPackage",
    "PackageFile",
    "PackageInvalidError",
    "PackageLimits",
    "extract_package",
    "inspect_package",
    "manifest_bytes",
    "package_id",
]
