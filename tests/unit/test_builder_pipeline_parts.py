"""Pure parts of the package pipeline: image names, the package JSON's keys, catalog entries of packages."""

from __future__ import annotations

import msgspec

from builder.pipeline import digest_uri, image_ref
from common.messages import PackageArtifact, PackageRecord, PackageTestResult
from common.package_config import PackageConfig
from registry_sync.packages import PACKAGES, catalog_entries, catalog_entry, service_id

PKG_ID = "ab" * 32


def _record(status: str = "ready", targets: tuple[str, ...] = ("docker-cpu",)) -> PackageRecord:
    artifacts = [
        PackageArtifact(target=t, uri=f"r:5000/acme/hello@sha256:{'0' * 64}", image=f"r:5000/acme/hello:x-{t}", size=7)
        for t in targets
    ]
    return PackageRecord(
        id=PKG_ID,
        name="acme/hello",
        status=status,  # type: ignore[arg-type]
        stage="ready",
        config=PackageConfig(name="acme/hello", model="model.py:Model"),
        artifacts=artifacts,
    )


def test_image_tag_names_the_package_and_the_uri_the_digest() -> None:
    ref = image_ref("127.0.0.1:5000", "acme/hello", PKG_ID, "docker-cpu")
    assert ref == f"127.0.0.1:5000/acme/hello:{PKG_ID[:12]}-docker-cpu"
    assert digest_uri(ref, "sha256:" + "f" * 64) == "127.0.0.1:5000/acme/hello@sha256:" + "f" * 64
    assert image_ref("", "acme/hello", PKG_ID, "docker-gpu").startswith("premd-packages/acme/hello:")


def test_package_json_keeps_the_original_keys_and_adds_status() -> None:
    record = msgspec.structs.replace(
        _record(),
        artifacts=[msgspec.structs.replace(_record().artifacts[0], test=PackageTestResult(status="untested"))],
    )
    doc = msgspec.json.decode(msgspec.json.encode(record))
    assert {"ID", "Name", "Artifacts", "Config", "Status", "Stage", "Error", "Timings", "ZipSHA256"} <= set(doc)
    assert set(doc["Artifacts"][0]) >= {"Target", "URI", "Digest", "Test"}
    assert doc["Artifacts"][0]["Test"]["Status"] == "untested"
    assert set(doc["Config"]["Environment"]) >= {"PythonVersion", "PythonPackages", "CUDA", "CuDNN"}
    assert msgspec.json.decode(msgspec.json.encode(record), type=PackageRecord) == record


def test_only_ready_packages_are_catalog_services() -> None:
    entry = catalog_entry(_record())
    assert entry is not None and entry.origin == PACKAGES
    manifest = entry.manifest
    assert manifest.id == service_id(PKG_ID) == f"pkg-{PKG_ID[:12]}"
    assert manifest.default_port == 5000 and manifest.docker_images is not None
    assert manifest.docker_images.cpu is not None and manifest.docker_images.cpu.image.endswith("x-docker-cpu")
    assert manifest.docker_images.gpu is None
    for status in ("queued", "building", "testing", "pushing", "failed"):
        assert catalog_entry(_record(status)) is None
    assert catalog_entry(_record(targets=())) is None
    assert [e.manifest.id for e in catalog_entries([_record("failed"), _record()])] == [service_id(PKG_ID)]
