"""The in-image runtime (builder/image/runtime/premd_runtime.py), run as a real process serving real HTTP."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from builder.image.context import RUNTIME_FILE
from tests.support.packages import HELLO_MODEL, hanging_setup_files, raising_files, write_package_dir
from tests.testbed.util import StopWaiting, free_port, wait_until

RUNTIME = Path(__file__).resolve().parents[2] / "builder" / "image" / "runtime" / RUNTIME_FILE

GATED_MODEL = """\
import os, pathlib, time

class Model:
    def setup(self):
        print("loading weights")
        gate = pathlib.Path(os.environ["GATE"])
        while not gate.exists():
            time.sleep(0.02)

    def run(self, text=""):
        return "hello " + text
"""

KINDS_MODEL = """\
import pathlib

class Model:
    def run(self, kind="str", upload=None):
        print("run with", kind)
        if kind == "boom":
            raise ValueError("the model broke")
        if kind == "dict":
            return {"n": 3, "items": [1, 2]}
        if kind == "bytes":
            return b"\\x00\\x01"
        if kind == "path":
            out = pathlib.Path("/tmp") / "premd-runtime-test-out.txt"
            out.write_text("from a file")
            return out
        if kind == "upload":
            return "got " + pathlib.Path(upload).read_text()
        if kind == "object":
            return object()
        return "plain"
"""

FAILING_SETUP = """\
class Model:
    def setup(self):
        raise RuntimeError("weights missing")

    def run(self):
        return "never"
"""


async def _spawn(code: Path, model: str, port: int, **env: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        str(RUNTIME),
        env={
            **os.environ,
            "PREMD_MODEL": model,
            "PREMD_CODE_DIR": str(code),
            "PORT": str(port),
            "PREMD_BIND": "127.0.0.1",
            **env,
        },
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )


@asynccontextmanager
async def runtime(tmp_path: Path, files: dict[str, str | bytes], model: str, **env: str) -> AsyncIterator[str]:
    port = free_port()
    proc = await _spawn(write_package_dir(tmp_path / "code", files), model, port, **env)
    base = f"http://127.0.0.1:{port}"
    try:

        async def listening() -> bool:
            if proc.returncode is not None:
                raise StopWaiting(f"runtime exited with {proc.returncode}")
            return (await _get(base + "/health-check"))[0] == 200

        await wait_until(listening, deadline_s=20, what="runtime listening")
        yield base
    finally:
        if proc.returncode is None:
            proc.terminate()
        await asyncio.wait_for(proc.wait(), timeout=10)


async def _get(url: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as s, s.get(url) as resp:
        body = await resp.json() if resp.content_type == "application/json" else await resp.text()
        return resp.status, body


async def _post(url: str, **kwargs: Any) -> tuple[int, Any, Mapping[str, str]]:
    async with aiohttp.ClientSession() as s, s.post(url, **kwargs) as resp:
        body = await resp.json() if resp.content_type == "application/json" else await resp.read()
        return resp.status, body, dict(resp.headers)


async def _until_status(base: str, status: str) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    async def reached() -> bool:
        _, doc = await _get(base + "/health-check")
        seen.update(doc)
        return bool(doc["status"] == status)

    await wait_until(reached, deadline_s=20, what=f"health {status}")
    return seen


async def test_starting_then_ready_on_every_contract(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    async with runtime(tmp_path, {"model.py": GATED_MODEL}, "model.py:Model", GATE=str(gate)) as base:
        status, doc = await _get(base + "/health-check")
        assert status == 200 and doc["status"] == "STARTING" and doc["setup"]["status"] == "starting"
        assert (await _get(base + "/ping"))[0] == 503
        assert (await _get(base + "/v1/"))[0] == 503
        assert (await _post(base + "/predictions", json={"input": {}}))[0] == 503
        gate.touch()
        doc = await _until_status(base, "READY")
        assert doc["setup"]["status"] == "succeeded" and "loading weights" in doc["setup"]["logs"]
        assert await _get(base + "/ping") == (200, "PONG")
        assert (await _get(base + "/v1/"))[0] == 200
        status, body, _ = await _post(base + "/predictions", json={"input": {"text": "world"}})
        assert status == 200 and body["status"] == "succeeded" and body["output"] == "hello world"
        assert body["metrics"]["predict_time"] >= 0
        status, raw, headers = await _post(base + "/infer", data={"text": "form"})
        assert (status, raw) == (200, b"hello form") and "X-Run-Time" in headers and "X-Setup-Time" in headers
        status, raw, _ = await _post(base + "/infer")  # the original's test call: an empty form
        assert (status, raw) == (200, b"hello ")


async def test_outputs_inputs_and_failures(tmp_path: Path) -> None:
    async with runtime(tmp_path, {"model.py": KINDS_MODEL}, "model.py:Model") as base:
        await _until_status(base, "READY")
        status, body, _ = await _post(base + "/infer", json={"kind": "dict"})
        assert (status, body) == (200, {"n": 3, "items": [1, 2]})
        assert (await _post(base + "/infer", data={"kind": "bytes"}))[:2] == (200, b"\x00\x01")
        status, raw, headers = await _post(base + "/infer", data={"kind": "path"})
        assert (status, raw) == (200, b"from a file") and headers["Content-Type"].startswith("text/plain")
        form = aiohttp.FormData()
        form.add_field("kind", "upload")
        form.add_field("upload", b"uploaded bytes", filename="in.txt", content_type="text/plain")
        assert (await _post(base + "/infer", data=form))[:2] == (200, b"got uploaded bytes")
        status, raw, _ = await _post(base + "/infer", data={"kind": "boom"})
        assert status == 500 and b"ValueError: the model broke" in raw and b"Traceback" in raw
        assert (await _post(base + "/infer", data={"kind": "object"}))[0] == 500
        status, body, _ = await _post(base + "/predictions", json={"input": {"kind": "boom"}})
        assert status == 200 and body["status"] == "failed" and "the model broke" in body["error"]
        assert "run with boom" in body["logs"] and "Traceback" in body["logs"]
        status, body, _ = await _post(base + "/predictions", json={"input": {"kind": "path"}})
        assert body["output"] == "data:text/plain;base64,ZnJvbSBhIGZpbGU="
        status, body, _ = await _post(
            base + "/predictions", data=b"not json", headers={"Content-Type": "application/json"}
        )
        assert status == 400
        assert (await _get(base + "/nowhere"))[0] == 404
        status, body, _ = await _post(
            base + "/infer", data=b"\xff\xfe", headers={"Content-Type": "application/x-www-form-urlencoded"}
        )
        assert status == 400 and "UTF-8" in body["detail"]


async def test_chunked_request_bodies_are_read(tmp_path: Path) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for part in (b'{"input": {"te', b'xt": "chunked"}}'):
            yield part

    async with runtime(tmp_path, {"model.py": HELLO_MODEL}, "model.py:Model") as base:
        await _until_status(base, "READY")
        headers = {"Content-Type": "application/json"}
        status, body, _ = await _post(base + "/predictions", data=chunks(), headers=headers)
        assert (status, body["output"]) == (200, "hello chunked")


async def test_the_shared_test_packages_behave_as_documented(tmp_path: Path) -> None:
    async with runtime(tmp_path / "r", raising_files(), "model.py:Model") as base:
        await _until_status(base, "READY")
        status, body, _ = await _post(base + "/predictions", json={"input": {"text": "x"}})
        assert body["status"] == "failed" and "run failed on purpose: x" in body["error"]
    async with runtime(tmp_path / "h", hanging_setup_files(), "model.py:Model") as base:
        status, doc = await _get(base + "/health-check")
        assert (status, doc["status"]) == (200, "STARTING")


async def test_failed_setup_is_reported_with_its_log(tmp_path: Path) -> None:
    async with runtime(tmp_path, {"model.py": FAILING_SETUP}, "model.py:Model") as base:
        doc = await _until_status(base, "SETUP_FAILED")
        assert doc["setup"]["status"] == "failed" and "RuntimeError: weights missing" in doc["setup"]["logs"]
        status, body = await _get(base + "/v1/")
        assert status == 503 and body["status"] == "SETUP_FAILED"
        status, body, _ = await _post(base + "/predictions", json={})
        assert status == 503 and "weights missing" in body["logs"]


@pytest.mark.parametrize(
    ("files", "model", "needle"),
    [
        ({"model.py": HELLO_MODEL}, "model.py:Missing", "AttributeError"),
        ({"model.py": "import not_installed_anywhere\n"}, "model.py:Model", "ModuleNotFoundError"),
        ({"model.py": "class Model:\n    pass\n"}, "model.py:Model", "neither run() nor predict()"),
    ],
)
async def test_import_problems_are_setup_failures(
    tmp_path: Path, files: dict[str, str | bytes], model: str, needle: str
) -> None:
    async with runtime(tmp_path, files, model) as base:
        doc = await _until_status(base, "SETUP_FAILED")
        assert needle in doc["setup"]["logs"]


async def test_sigterm_stops_it_at_once(tmp_path: Path) -> None:
    port = free_port()
    proc = await _spawn(write_package_dir(tmp_path / "code", {"model.py": HELLO_MODEL}), "model.py:Model", port)
    try:
        await wait_until(lambda: _ready(f"http://127.0.0.1:{port}/v1/"), deadline_s=20, what="ready")
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), timeout=3) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def _ready(url: str) -> bool:
    return (await _get(url))[0] == 200
