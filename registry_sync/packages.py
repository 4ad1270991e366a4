"""Ready model packages as catalog services (origin ``packages``): pure conversion from their KV records.

A package runs like any Prem service: its image is the artifact's tag (named by the package ID, so it never
moves), its port the in-image runtime's, its readiness the runtime's ``GET /v1/``.
"""

from __future__ import annotations

from collections.abc import Iterable

from common.manifest import DockerImages, ImageEntry, Manifest
from common.messages import CatalogEntry, PackageRecord
from common.package_config import RUNTIME_PORT

PACKAGES = "packages"
"""CatalogEntry.origin of services built from model packages."""
INTERFACES = ["model-package"]
"""What the runtime serves: the original contract (/ping, /infer) and Cog's (/health-check, /predictions)."""
ID_CHARS = 12


def service_id(package_id: str) -> str:
    return f"pkg-{package_id[:ID_CHARS]}"


def catalog_entry(record: PackageRecord) -> CatalogEntry | None:
    """The service of a ready package; None for one that is not (yet) runnable."""
    if record.status != "ready":
        return None
    images = {artifact.target: ImageEntry(image=artifact.image, size=artifact.size) for artifact in record.artifacts}
    if not images:
        return None
    manifest = Manifest(
        id=service_id(record.id),
        name=record.name,
        interfaces=list(INTERFACES),
        docker_images=DockerImages(cpu=images.get("docker-cpu"), gpu=images.get("docker-gpu")),
        default_port=RUNTIME_PORT,
        description=f"Model package {record.name} ({record.id[:ID_CHARS]}), built by premd's builder",
        model_info={"packageId": record.id, "model": record.config.model},
    )
    return CatalogEntry(manifest=manifest, origin=PACKAGES)


def catalog_entries(records: Iterable[PackageRecord]) -> list[CatalogEntry]:
    """Ready packages' services, by package ID (a stable catalog order)."""
    entries = [catalog_entry(record) for record in sorted(records, key=lambda r: r.id)]
    return [entry for entry in entries if entry is not None]
