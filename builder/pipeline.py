"""One build attempt of a package: building -> testing -> pushing -> ready, or failed at a stage with a reason.

Nothing is pushed before every testable image passed its test. Every state change is written to KV (compare-and-
set) before its event is published. An attempt can run again from the start (its builder was killed): the Docker
build cache makes the repeated build cheap, and a test container the killed builder left is removed first.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import msgspec
from nats.js import JetStreamContext

from builder.buildlog import BuildLog
from builder.docker_driver import LABEL_PACKAGE, BuilderDocker, TestRun, TestSpec, write_context_tar
from builder.image import build_network, prepare_wheelhouse, render_build_context, resolve_base_image
from builder.package import InspectedPackage, PackageLimits, extract_package, inspect_package
from builder.store import Gone, PackageStore
from common import codec, subjects
from common.errors import AppError, Code
from common.jetstream import kv_bucket, kv_get
from common.messages import (
    HostFacts,
    PackageArtifact,
    PackageRecord,
    PackageStage,
    PackageStatus,
    PackageTestResult,
)
from common.package_config import arch_of
from common.settings import Settings, parse_base_images

logger = logging.getLogger(__name__)

TAG_ID_CHARS = 12
LOCAL_REGISTRY = "premd-packages"
"""Repository prefix of package images when no push registry is set (they stay on this engine)."""


class StageFailed(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def image_ref(registry: str, name: str, package_id: str, target: str) -> str:
    """``<registry>/<name>:<id prefix>-<target>``: the tag names the package, not the image's own id."""
    return f"{registry or LOCAL_REGISTRY}/{name}:{package_id[:TAG_ID_CHARS]}-{target}"


def digest_uri(ref: str, digest: str) -> str:
    """``<registry>/<name>@sha256:...`` for ``<registry>/<name>:<tag>``."""
    repo = ref.rsplit(":", 1)[0]
    return f"{repo}@{digest}"


@dataclass(slots=True)
class Built:
    target: str
    ref: str
    image_id: str
    size: int
    test: PackageTestResult | None = None


class Pipeline:
    def __init__(self, settings: Settings, js: JetStreamContext, store: PackageStore, docker: BuilderDocker) -> None:
        self.settings = settings
        self._js = js
        self._store = store
        self._docker = docker
        self._limits = PackageLimits.from_settings(settings)
        self._base_images = parse_base_images(settings.builder_base_images)
        self.work_dir = Path(settings.builder_work_dir or Path(settings.data_dir) / "builder")

    async def run(self, package_id: str, attempt: int, redelivered: bool = False) -> PackageRecord | None:
        """Run one attempt to its end (ready or failed); None when the package is gone or already ended."""
        record, _ = await self._store.get(package_id)
        if record is None or record.attempt != attempt or record.status in ("ready", "failed"):
            return record
        log = BuildLog(self._js, package_id, attempt)
        stage: PackageStage = "building"
        started = time.time()
        timings = {"queued": max(0.0, started - record.updated_at)} if record.status == "queued" else {}
        self.work_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f"build-{package_id[:12]}-", dir=self.work_dir))
        try:
            if redelivered:
                await log.line("builder: this attempt was interrupted (its builder stopped); starting it again")
            await self._set(log, package_id, "building", "building", timings=timings)
            pkg = await self._unpack(package_id, tmp)
            t0 = time.monotonic()
            built = [await self._build(pkg, target, tmp, log) for target in pkg.config.targets()]
            timings["building"] = time.monotonic() - t0

            stage = "testing"
            await self._set(log, package_id, "testing", "testing", timings=timings)
            t0 = time.monotonic()
            for item in built:
                item.test = await self._test(pkg, item, log)
            timings["testing"] = time.monotonic() - t0

            stage = "pushing"
            await self._set(log, package_id, "pushing", "pushing", timings=timings)
            t0 = time.monotonic()
            artifacts = [await self._publish(item, log) for item in built]
            timings["pushing"] = time.monotonic() - t0
            timings["total"] = time.time() - (record.updated_at if record.status == "queued" else started)
            done = await self._set(log, package_id, "ready", "ready", timings=timings, artifacts=artifacts)
            await log.line(f"builder: package {package_id} is ready")
            return done
        except Gone:
            logger.info("package %s deleted during its build", package_id)
            return None
        except (StageFailed, AppError) as exc:
            code = exc.code
            message = exc.message
        except Exception as exc:  # boundary: a bug fails this package, never the builder
            logger.exception("build of %s failed", package_id)
            code, message = Code.INTERNAL, f"internal error: {exc!r}"
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            await self._store_log(log)
        try:
            await log.line(f"builder: failed at {stage}: {message}")
            failed = await self._set(log, package_id, "failed", stage, timings=timings, error=(code, message))
        except Gone:
            return None
        await self._store_log(log)
        return failed

    # ------------------------------------------------------------ stages

    async def _unpack(self, package_id: str, tmp: Path) -> InspectedPackage:
        zip_path = tmp / "package.zip"
        await self._store.fetch_zip(package_id, zip_path)
        pkg = await asyncio.to_thread(inspect_package, zip_path, self._limits)
        if pkg.id != package_id:
            raise StageFailed(Code.PACKAGE_ID_MISMATCH, f"the stored zip has ID {pkg.id}, not {package_id}")
        await asyncio.to_thread(extract_package, zip_path, tmp / "src", self._limits, package_id)
        return pkg

    async def _build(self, pkg: InspectedPackage, target: str, tmp: Path, log: BuildLog) -> Built:
        base = resolve_base_image(pkg.config, target, self._base_images)
        await log.line(f"builder: {target}: base image {base}")
        house = await asyncio.to_thread(prepare_wheelhouse, pkg.config, tmp / "src", self.work_dir / "wheels", target)
        if house is not None:
            await log.line(f"builder: {target}: wheelhouse {house.name}")
        ctx = await asyncio.to_thread(
            render_build_context, pkg, tmp / "src", target, base, house, tmp / f"ctx-{target}"
        )
        tar = await asyncio.to_thread(write_context_tar, ctx, tmp / f"ctx-{target}.tar")
        ref = image_ref(self.settings.builder_push_registry, pkg.config.name, pkg.id, target)
        network = build_network(pkg.config)
        await log.line(f"builder: {target}: docker build -t {ref} (network {network})")
        image_id = await self._docker.build(
            tar, ref, network, {LABEL_PACKAGE: pkg.id}, self.settings.builder_build_timeout_s, log.line
        )
        info = await self._docker.image(image_id)
        return Built(target=target, ref=ref, image_id=image_id, size=int((info or {}).get("Size") or 0))

    async def _test(self, pkg: InspectedPackage, item: Built, log: BuildLog) -> PackageTestResult:
        gpu = arch_of(item.target) == "gpu"
        if gpu and not await self._host_has_gpu():
            await log.line(f"builder: {item.target}: untested (no GPU on this machine)")
            return PackageTestResult(status="untested", reason="no GPU on this machine")
        example = pkg.config.examples[0] if pkg.config.examples else None
        inputs = dict(example.input) if example is not None else {}
        await self._docker.remove_test_containers(pkg.id)
        await log.line(f"builder: {item.target}: testing {item.ref} with input {inputs}")
        run = await self._docker.test(
            TestSpec(
                image=item.image_id,
                package_id=pkg.id,
                inputs=inputs,
                memory_bytes=self.settings.builder_test_memory_bytes,
                setup_timeout_s=self.settings.builder_setup_timeout_s,
                run_timeout_s=self.settings.builder_run_timeout_s,
                gpu=gpu,
            )
        )
        for line in run.log.splitlines():
            await log.line(f"container: {line}")
        if run.passed and example is not None and example.output is not None:
            got = _text(run.output)
            if got.strip() != example.output.strip():
                run = TestRun(
                    passed=False,
                    code=Code.BUILD_TEST_FAILED,
                    reason=f"run() returned {got[:200]!r}, the example expects {example.output[:200]!r}",
                    setup_seconds=run.setup_seconds,
                    run_seconds=run.run_seconds,
                )
        if not run.passed:
            await self._docker.remove_image(item.ref)
            raise StageFailed(run.code, f"{item.target}: {run.reason}")
        await log.line(
            f"builder: {item.target}: test passed"
            f" (setup {run.setup_seconds or 0:.2f} s, run {run.run_seconds or 0:.3f} s)"
        )
        return PackageTestResult(
            status="passed",
            setup_seconds=run.setup_seconds,
            run_seconds=run.run_seconds,
            output=_text(run.output)[:4096],
        )

    async def _publish(self, item: Built, log: BuildLog) -> PackageArtifact:
        registry = self.settings.builder_push_registry
        digest = ""
        uri = item.ref
        if registry:
            await log.line(f"builder: {item.target}: pushing {item.ref}")
            digest = await self._docker.push(item.ref, log.line)
            uri = digest_uri(item.ref, digest)
        return PackageArtifact(
            target=item.target,
            uri=uri,
            image=item.ref,
            image_id=item.image_id,
            digest=digest,
            size=item.size,
            test=item.test,
        )

    # ------------------------------------------------------------ state

    async def _set(
        self,
        log: BuildLog,
        package_id: str,
        status: PackageStatus,
        stage: PackageStage,
        *,
        timings: dict[str, float],
        artifacts: list[PackageArtifact] | None = None,
        error: tuple[str, str] | None = None,
    ) -> PackageRecord:
        def apply(record: PackageRecord) -> PackageRecord:
            return msgspec.structs.replace(
                record,
                status=status,
                stage=stage,
                timings={k: round(v, 3) for k, v in timings.items()},
                artifacts=artifacts if artifacts is not None else record.artifacts,
                error=error[1] if error else "",
                error_code=error[0] if error else "",
                updated_at=time.time(),
            )

        record = await self._store.transition(package_id, apply)
        await log.state(status, stage, error[0] if error else None, error[1] if error else None)
        return record

    async def _store_log(self, log: BuildLog) -> None:
        try:
            await self._store.put_log(log.package_id, log.ndjson())
        except Exception as exc:  # boundary: the events still hold every line
            logger.warning("log of %s not stored: %s", log.package_id, exc)

    async def _host_has_gpu(self) -> bool:
        facts, _ = await kv_get(await kv_bucket(self._js, subjects.KV_HOST), subjects.HOST_FACTS_KEY, HostFacts)
        return bool(facts is not None and facts.gpus)


def _text(output: object) -> str:
    if output is None:
        return ""
    if isinstance(output, str):
        return output
    return codec.encode(output).decode()
