"""Every class of bad upload, over HTTP to a real builder on a real NATS: its 4xx, its stable code, a message
naming the problem, and nothing stored (no package, no zip, no upload object left)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest
from nats.js import JetStreamContext
from nats.js.api import ObjectInfo
from nats.js.object_store import ObjectStore

from common import subjects
from common.errors import Code
from common.settings import Settings
from gateway.keys import SETTINGS
from tests.support.builder_bed import Client, builder, builder_settings, gateway, upload
from tests.support.packages import HELLO_MODEL, hello_files, hello_zip, jid_yaml, write_package_zip

Make = Callable[[Path], bytes]


def _zip(files: dict[str, str | bytes], **kwargs: object) -> Make:
    return lambda tmp: write_package_zip(tmp / "p.zip", files, **kwargs).read_bytes()  # type: ignore[arg-type]


def _with_config(text: str, **more: str) -> Make:
    return _zip({"jid.yaml": text, "model.py": HELLO_MODEL, **more})


def _truncated(tmp: Path) -> bytes:
    whole = hello_zip(tmp / "h.zip").read_bytes()
    return whole[: len(whole) // 2]


CASES: list[tuple[str, Make, int, str, str]] = [
    ("not a zip", lambda tmp: b"just some text, not an archive\n" * 10, 400, Code.PACKAGE_NOT_ZIP, "zip"),
    ("truncated", _truncated, 400, Code.PACKAGE_TRUNCATED, ""),
    ("dot-dot", _zip(hello_files(), entries=[("../evil.py", "x")]), 400, Code.PACKAGE_UNSAFE_PATH, "evil.py"),
    ("absolute", _zip(hello_files(), entries=[("/etc/evil.py", "x")]), 400, Code.PACKAGE_UNSAFE_PATH, "evil.py"),
    ("symlink", _zip(hello_files(), symlinks={"secrets": "/etc/shadow"}), 400, Code.PACKAGE_SYMLINK, "secrets"),
    (
        "duplicate",
        _zip(hello_files(), entries=[("model.py", "x = 1\n")]),
        400,
        Code.PACKAGE_DUPLICATE_ENTRY,
        "model.py",
    ),
    # Below the ratio check's 1 MiB floor each, over the 3 MB total once decompressed.
    (
        "total size",
        _zip({**hello_files(), **{f"z{i}.bin": bytes(900_000) for i in range(4)}}),
        413,
        Code.PACKAGE_TOO_LARGE,
        "3000000",
    ),
    (
        "entries",
        _zip({**hello_files(), **{f"f{i}.txt": "x" for i in range(60)}}),
        413,
        Code.PACKAGE_TOO_MANY_ENTRIES,
        "",
    ),
    ("ratio", _zip({**hello_files(), "zeros.bin": bytes(2_500_000)}), 413, Code.PACKAGE_ZIP_BOMB, "zeros.bin"),
    ("no jid.yaml", _zip({"model.py": HELLO_MODEL}), 422, Code.PACKAGE_NO_CONFIG, "jid.yaml"),
    ("yaml syntax", _with_config("name: a\nmodel: [model.py:Model\n"), 422, Code.PACKAGE_YAML_SYNTAX, "line"),
    ("wrong type", _with_config("name: [a, b]\nmodel: model.py:Model\n"), 422, Code.PACKAGE_CONFIG_INVALID, "name"),
    ("unpinned", _with_config(jid_yaml(python_packages=["six"])), 422, Code.PACKAGE_UNPINNED, "six"),
    ("bad model spec", _with_config(jid_yaml(model="model:Model")), 422, Code.PACKAGE_BAD_MODEL, "model"),
    ("missing module", _with_config(jid_yaml(model="predict.py:Model")), 422, Code.PACKAGE_BAD_MODEL, "predict.py"),
    ("architecture", _with_config(jid_yaml(architectures=["tpu"])), 422, Code.PACKAGE_UNKNOWN_ARCHITECTURE, "tpu"),
    (
        "cuda",
        _with_config(jid_yaml(architectures=["gpu"], python_packages=["torch==2.1.0"], cuda="11.7")),
        422,
        Code.PACKAGE_CUDA_INCOMPATIBLE,
        "11.8",
    ),
]


@pytest.fixture
async def api(settings: Settings) -> AsyncIterator[Client]:
    limited = builder_settings(
        settings,
        "unused:image",
        "",
        package_max_upload_bytes=100_000,
        package_max_uncompressed_bytes=3_000_000,
        package_max_entries=50,
        package_max_ratio=100,
    )
    async with builder(limited), gateway(limited) as client:
        yield client


async def _nothing_stored(client: Client, js: JetStreamContext) -> None:
    assert await (await client.get("/v1/packages/")).json() == []
    for bucket in (subjects.OBJ_PACKAGE_UPLOADS, subjects.OBJ_PACKAGES):
        store = await js.object_store(bucket)
        assert [info.name for info in await _objects(store)] == [], bucket


async def _objects(store: ObjectStore) -> list[ObjectInfo]:
    try:
        return list(await store.list(ignore_deletes=True))
    except Exception as exc:  # nats-py raises NotFoundError for an empty store
        if type(exc).__name__ == "NotFoundError":
            return []
        raise


@pytest.mark.parametrize(("what", "make", "status", "code", "names"), CASES, ids=[c[0] for c in CASES])
async def test_bad_package_is_refused_and_nothing_stored(
    api: Client, js: JetStreamContext, tmp_path: Path, what: str, make: Make, status: int, code: str, names: str
) -> None:
    resp = await upload(api, make(tmp_path))
    body = await resp.json()
    assert (resp.status, body["detail"]["code"]) == (status, code), body
    assert names in body["detail"]["message"], body
    await _nothing_stored(api, js)


async def test_not_multipart_no_file_and_too_large(api: Client, js: JetStreamContext, tmp_path: Path) -> None:
    raw = await api.post("/v1/packages/upload", data=b"PK\x03\x04", headers={"Content-Type": "application/zip"})
    body = await raw.json()
    assert (raw.status, body["detail"]["code"]) == (415, Code.PACKAGE_NOT_MULTIPART)
    assert "multipart/form-data" in body["detail"]["message"]

    form = aiohttp.FormData()
    form.add_field("other", b"x", filename="p.zip")
    nofile = await api.post("/v1/packages/upload", data=form)
    body = await nofile.json()
    assert (nofile.status, body["detail"]["code"]) == (400, Code.PACKAGE_NO_FILE)
    assert "'file'" in body["detail"]["message"]

    big = write_package_zip(tmp_path / "big.zip", {**hello_files(), "w.bin": os.urandom(150_000)}).read_bytes()
    resp = await upload(api, big)
    body = await resp.json()
    assert (resp.status, body["detail"]["code"]) == (413, Code.PACKAGE_TOO_LARGE)
    assert "100000 bytes" in body["detail"]["message"]
    await _nothing_stored(api, js)
    spool = Path(api.app[SETTINGS].data_dir) / "uploads"
    assert not spool.exists() or list(spool.iterdir()) == []
