"""The reference Prem service (tests/testbed/refservice/server.py) run as a plain subprocess on loopback."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import aiohttp
import pytest

from tests.testbed.images import SERVER_PY
from tests.testbed.refservice.server import EMBEDDING_DIM, embed
from tests.testbed.sse import iter_sse
from tests.testbed.util import free_port, wait_until_sync


@dataclass
class Ref:
    proc: subprocess.Popen[str]
    url: str


def _spawn(env: dict[str, str]) -> tuple[subprocess.Popen[str], int]:
    port = free_port()
    full_env = {**os.environ, "REF_HOST": "127.0.0.1", "REF_PORT": str(port), **env}
    proc = subprocess.Popen(
        [sys.executable, "-u", str(SERVER_PY)],
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    return proc, port


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=2.0) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read()


def _healthy(proc: subprocess.Popen[str], url: str) -> bool:
    if proc.poll() is not None:
        raise AssertionError(f"ref service exited early with {proc.returncode}")
    try:
        return _get(url + "/v1/")[0] == 200
    except OSError:
        return False


def _stop(proc: subprocess.Popen[str]) -> str:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    out, _ = proc.communicate()
    return out


@pytest.fixture(scope="module")
def ref() -> Iterator[Ref]:
    proc, port = _spawn({"REF_TOKEN_DELAY_S": "0.01"})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_sync(lambda: _healthy(proc, url), timeout=15, what="ref service health")
        yield Ref(proc, url)
    finally:
        _stop(proc)


async def _post(url: str, payload: object) -> tuple[int, dict[str, object]]:
    async with aiohttp.ClientSession() as session, session.post(url, json=payload) as resp:
        return resp.status, await resp.json()


async def test_health_and_models(ref: Ref) -> None:
    assert _get(ref.url + "/v1/") == (200, b'{"status": true}')
    status, body = _get(ref.url + "/v1/models")
    assert status == 200
    assert json.loads(body)["data"][0]["id"] == "ref-model"
    assert _get(ref.url + "/nope")[0] == 404


async def test_chat_non_stream(ref: Ref) -> None:
    status, body = await _post(
        ref.url + "/v1/chat/completions",
        {"model": "m", "messages": [{"role": "user", "content": "hello there"}], "ref_tokens": 5},
    )
    assert status == 200
    assert body["object"] == "chat.completion"
    assert body["model"] == "m"
    assert {"id", "created", "usage"} <= body.keys()
    choices = body["choices"]
    assert isinstance(choices, list)
    assert choices[0]["message"] == {"role": "assistant", "content": "hello there this is a"}
    assert choices[0]["finish_reason"] == "stop"


async def test_chat_stream_is_incremental(ref: Ref) -> None:
    payload = {
        "messages": [{"role": "user", "content": "one two"}],
        "stream": True,
        "ref_tokens": 4,
        "ref_token_delay_s": 0.15,
    }
    async with aiohttp.ClientSession() as session:
        async with session.post(ref.url + "/v1/chat/completions", json=payload) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            events = [ev async for ev in iter_sse(resp)]
    assert [e.event for e in events] == ["completion"] * 4 + ["done"]
    assert events[-1].data == "[DONE]"
    tokens = [json.loads(e.data)["choices"][0]["delta"]["content"] for e in events[:-1]]
    assert "".join(tokens) == "one two this is"
    # Tokens were flushed one by one: the first arrived well before the end of the stream.
    assert events[-1].arrived - events[0].arrived >= 0.3


async def test_embeddings(ref: Ref) -> None:
    status, body = await _post(ref.url + "/v1/embeddings", {"input": ["a", "b", "a"], "model": "e"})
    assert status == 200
    data = body["data"]
    assert isinstance(data, list)
    assert [d["index"] for d in data] == [0, 1, 2]
    assert all(len(d["embedding"]) == EMBEDDING_DIM for d in data)
    assert data[0]["embedding"] == data[2]["embedding"] != data[1]["embedding"]
    assert data[0]["embedding"] == embed("a")
    status, single = await _post(ref.url + "/v1/embeddings", {"input": "a"})
    assert status == 200
    single_data = single["data"]
    assert isinstance(single_data, list)
    assert len(single_data) == 1
    assert (await _post(ref.url + "/v1/embeddings", {"input": 3}))[0] == 400


async def test_images_and_audio(ref: Ref) -> None:
    status, body = await _post(ref.url + "/v1/images/generations", {"prompt": "cat", "n": 2})
    assert status == 200
    data = body["data"]
    assert isinstance(data, list)
    assert len(data) == 2
    assert base64.b64decode(data[0]["b64_json"]).startswith(b"\x89PNG\r\n\x1a\n")
    form = aiohttp.FormData()
    form.add_field("file", b"\x00" * 1000, filename="a.wav", content_type="audio/wav")
    async with aiohttp.ClientSession() as session:
        async with session.post(ref.url + "/v1/audio/transcriptions", data=form) as resp:
            assert resp.status == 200
            assert "reference transcription" in (await resp.json())["text"]


async def test_echo(ref: Ref) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.post(ref.url + "/echo/x?a=1", data=b"\x01\x02body", headers={"X-Test": "yes"}) as resp:
            body = await resp.json()
        assert body["method"] == "POST"
        assert body["path"] == "/echo/x"
        assert body["query"] == {"a": "1"}
        assert body["headers"]["X-Test"] == "yes"
        assert base64.b64decode(body["body_b64"]) == b"\x01\x02body"

        async def chunks() -> object:
            yield b"part1-"
            yield b"part2"

        async with session.post(ref.url + "/echo?raw=1", data=chunks()) as resp:
            assert await resp.read() == b"part1-part2"
            assert json.loads(resp.headers["X-Echo-Headers"])["Transfer-Encoding"] == "chunked"


def test_interface_restricts_routes() -> None:
    proc, port = _spawn({"REF_INTERFACE": "embeddings"})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_sync(lambda: _healthy(proc, url), timeout=15, what="ref service health")
        req = urllib.request.Request(url + "/v1/chat/completions", data=b"{}", method="POST")
        with pytest.raises(urllib.error.HTTPError) as exc_info:
            urllib.request.urlopen(req, timeout=2.0)
        exc_info.value.close()
        assert exc_info.value.code == 404
        req = urllib.request.Request(url + "/v1/embeddings", data=b'{"input": "x"}', method="POST")
        with urllib.request.urlopen(req, timeout=2.0) as resp:
            assert resp.status == 200
    finally:
        _stop(proc)


def test_crash_knob_exits_with_code() -> None:
    proc, _ = _spawn({"REF_CRASH_AFTER_S": "0", "REF_CRASH_CODE": "7"})
    assert proc.wait(timeout=10) == 7
    out = _stop(proc)
    assert "ref-service starting" in out
    assert "crashing with code 7" in out

    proc, _ = _spawn({"REF_CRASH_AFTER_S": "0.5"})
    assert proc.wait(timeout=10) == 3
    assert "ref-service listening on 127.0.0.1:" in _stop(proc)


def test_ready_delay_binds_late_and_sigterm_exits_zero() -> None:
    proc, port = _spawn({"REF_READY_DELAY_S": "0.6"})
    url = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    try:
        wait_until_sync(lambda: _healthy(proc, url), timeout=15, what="ref service health")
        assert time.monotonic() - started >= 0.5
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
    finally:
        out = _stop(proc)
    assert "loading model" in out
    assert "stopping on signal" in out
