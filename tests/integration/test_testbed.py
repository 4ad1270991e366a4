"""The test bed against the real Docker engine: reference image, containers, OCI registry push/pull."""

from __future__ import annotations

import json
import os
import uuid
from typing import Any

import aiodocker
import aiohttp
import pytest

from tests.testbed.containers import ContainerFactory
from tests.testbed.images import REF_PORT, SHA_LABEL, build_image, image_labels, server_sha256
from tests.testbed.oci_registry import OciRegistry
from tests.testbed.plugin import require_docker
from tests.testbed.sse import iter_sse


@pytest.mark.docker
async def test_ref_image_is_labelled_with_server_sha(docker: aiodocker.Docker, ref_image: str) -> None:
    labels = await image_labels(docker, ref_image)
    assert labels is not None
    assert labels[SHA_LABEL] == server_sha256()


@pytest.mark.docker
async def test_ref_container_serves_prem_interfaces(make_container: ContainerFactory, ref_image: str) -> None:
    ref = await make_container(ref_image, env={"REF_TOKEN_DELAY_S": "0.15", "REF_TOKENS": "4"})
    assert set(ref.ports) == {REF_PORT}
    await ref.wait_http("/v1/", deadline_s=30)
    info = await ref.show()
    assert info["NetworkSettings"]["Ports"][f"{REF_PORT}/tcp"][0]["HostIp"] == "127.0.0.1"

    chat = {"model": "ref", "messages": [{"role": "user", "content": "hi docker"}]}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        async with session.get(ref.url() + "/v1/") as resp:
            assert await resp.json() == {"status": True}

        async with session.post(ref.url() + "/v1/chat/completions", json=chat) as resp:
            assert resp.status == 200
            body = await resp.json()
        assert body["object"] == "chat.completion"
        assert body["choices"][0]["message"]["content"] == "hi docker this is"

        async with session.post(ref.url() + "/v1/chat/completions", json={**chat, "stream": True}) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            events = []
            async for event in iter_sse(resp):
                events.append(event)
                if len(events) == 1:
                    # The first token is here while the rest is still being generated.
                    assert event.event == "completion"
                    assert not resp.content.at_eof()
        assert [e.event for e in events] == ["completion"] * 4 + ["done"]
        assert events[-1].data == "[DONE]"
        deltas = [json.loads(e.data)["choices"][0]["delta"]["content"] for e in events[:-1]]
        assert "".join(deltas) == "hi docker this is"
        assert events[-1].arrived - events[0].arrived >= 0.3  # separate, flushed events

        async with session.post(ref.url() + "/v1/embeddings", json={"input": ["a", "b"], "model": "e"}) as resp:
            emb = await resp.json()
        assert [len(d["embedding"]) for d in emb["data"]] == [384, 384]
        assert emb["data"][0]["embedding"] != emb["data"][1]["embedding"]


@pytest.mark.docker
async def test_crash_knob_exits_with_code_and_logs(make_container: ContainerFactory, ref_image: str) -> None:
    ref = await make_container(ref_image, env={"REF_CRASH_AFTER_S": "1", "REF_CRASH_CODE": "3"})
    assert await ref.wait_exit(deadline_s=30) == 3
    logs = await ref.logs(tail=20)
    assert "ref-service listening on 0.0.0.0:8000" in logs
    assert "crashing with code 3" in logs
    state = (await ref.show())["State"]
    assert state["Status"] == "exited"
    assert state["ExitCode"] == 3


@pytest.mark.docker
async def test_push_then_pull_from_local_registry(
    docker: aiodocker.Docker, base_image: str, oci_registry: OciRegistry
) -> None:
    # A tiny image with a layer of its own, so that pulling it back really transfers a layer.
    local_tag = f"premd-test/roundtrip-{uuid.uuid4().hex[:10]}:1"
    blob = os.urandom(256 * 1024)
    dockerfile = f"FROM {base_image}\nCOPY blob /blob\nLABEL org.premd.test=roundtrip\n".encode()
    await build_image(docker, local_tag, {"Dockerfile": dockerfile, "blob": blob})
    expected_ref = f"{oci_registry.host}/{local_tag}"
    try:
        remote_ref = await oci_registry.push(docker, local_tag)
        assert remote_ref == expected_ref
        async with aiohttp.ClientSession() as session:
            repo, tag = remote_ref.removeprefix(oci_registry.host + "/").rsplit(":", 1)
            async with session.get(f"{oci_registry.url}/v2/{repo}/tags/list") as resp:
                assert (await resp.json())["tags"] == [tag]

        # Remove every local reference, then pull it back from the registry.
        await docker.images.delete(local_tag, force=True)
        await docker.images.delete(remote_ref, force=True)
        with pytest.raises(aiodocker.DockerError) as missing:
            await docker.images.inspect(remote_ref)
        assert missing.value.status == 404

        events: list[dict[str, Any]] = [ev async for ev in docker.images.pull(remote_ref, stream=True)]
        statuses = [str(ev.get("status", "")) for ev in events]
        assert not any("error" in ev for ev in events)
        downloading = [ev for ev in events if ev.get("status") == "Downloading"]
        assert downloading
        assert all(ev["progressDetail"]["total"] > 0 for ev in downloading)
        assert "Pull complete" in statuses
        assert any(s.startswith("Digest: sha256:") for s in statuses)
        assert statuses[-1] == f"Status: Downloaded newer image for {remote_ref}"
        pulled = await docker.images.inspect(remote_ref)
        assert pulled["Config"]["Labels"]["org.premd.test"] == "roundtrip"
    finally:
        for ref in (local_tag, expected_ref):
            try:
                await docker.images.delete(ref, force=True)
            except aiodocker.DockerError as exc:
                if exc.status != 404:
                    raise


@pytest.mark.parametrize("ci", ["true", ""])
def test_missing_engine_fails_in_ci_and_skips_otherwise(monkeypatch: pytest.MonkeyPatch, ci: str) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/premd-test-docker.sock")
    monkeypatch.setenv("CI", ci)
    monkeypatch.delenv("PREMD_REQUIRE_DOCKER", raising=False)
    expected = pytest.fail.Exception if ci else pytest.skip.Exception
    with pytest.raises(expected, match=r"install-system-deps\.sh"):
        require_docker()
