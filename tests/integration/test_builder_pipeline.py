"""A package through the whole pipeline on the real engine and the local OCI registry, driven over HTTP:
upload -> queued -> building -> testing -> pushing -> ready; list, get, download, logs agree; the image is in the
registry by digest; the same files zipped differently give the same ID without a rebuild; deletion."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiodocker
import aiohttp
import pytest

from common.settings import Settings
from tests.support.builder_bed import (
    Client,
    builder_settings,
    package_api,
    rezip,
    unique,
    upload,
    wait_ended,
    zip_bytes,
)
from tests.support.packages import hello_files, six_files
from tests.testbed.oci_registry import OciRegistry
from tests.testbed.sse import iter_sse

pytestmark = pytest.mark.docker

MANIFEST_TYPES = ", ".join(
    (
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
    )
)


@pytest.fixture
def bsettings(settings: Settings, base_image: str, oci_registry: OciRegistry) -> Settings:
    return builder_settings(settings, base_image, oci_registry.host)


@pytest.fixture
async def api(bsettings: Settings, docker: aiodocker.Docker) -> AsyncIterator[tuple[Client, list[str]]]:
    async with package_api(bsettings, docker) as api:
        yield api


async def test_hello_upload_to_ready_list_get_download_and_same_files_same_id(
    api: tuple[Client, list[str]], tmp_path: Path, oci_registry: OciRegistry, docker: aiodocker.Docker
) -> None:
    client, made = api
    data = zip_bytes(tmp_path, unique(hello_files()))
    resp = await upload(client, data)
    body = await resp.json()
    assert resp.status == 202, body
    assert body["Status"] == "queued"
    package_id = body["ID"]
    made.append(package_id)
    assert len(package_id) == 64 and body["Name"] == "premd-test/hello"
    assert body["Config"]["Environment"]["Architectures"] == ["cpu"]

    done = await wait_ended(client, package_id)
    assert done["Status"] == "ready", done
    assert done["Stage"] == "ready" and done["Error"] == ""
    assert set(done["Timings"]) >= {"building", "testing", "pushing", "total"}
    [artifact] = done["Artifacts"]
    assert artifact["Target"] == "docker-cpu"
    assert artifact["Image"] == f"{oci_registry.host}/premd-test/hello:{package_id[:12]}-docker-cpu"
    assert artifact["URI"] == f"{oci_registry.host}/premd-test/hello@{artifact['Digest']}"
    assert artifact["Test"]["Status"] == "passed" and artifact["Test"]["Output"] == "hello world"

    # The registry holds the image under that digest.
    async with aiohttp.ClientSession() as session:
        url = f"{oci_registry.url}/v2/premd-test/hello/manifests/{artifact['Digest']}"
        async with session.get(url, headers={"Accept": MANIFEST_TYPES}) as reg:
            assert reg.status == 200, await reg.text()

    # list (with and without the slash), get and download agree.
    for path in ("/v1/packages/", "/v1/packages"):
        listed = await (await client.get(path)).json()
        assert [p for p in listed if p["ID"] == package_id] == [done]
    assert await (await client.get(f"/v1/packages/{package_id}")).json() == done
    zipped = await client.get(f"/v1/packages/{package_id}.zip")
    assert zipped.status == 200 and zipped.content_type == "application/zip"
    assert await zipped.read() == data

    # The same files zipped otherwise: the same ID, answered at once as it is (no new attempt).
    again = await upload(client, rezip(data))
    same = await again.json()
    assert again.status == 200, same
    assert same["ID"] == package_id and same["Attempt"] == 1 and same["UpdatedAt"] == done["UpdatedAt"]
    assert await (await client.get(f"/v1/packages/{package_id}.zip")).read() == data  # the first upload's bytes

    # Logs: every stage, in order, and the test's output; follow=1 replays and ends.
    logs = await client.get(f"/v1/packages/{package_id}/logs")
    events = [json.loads(line) for line in (await logs.text()).splitlines()]
    states = [e["status"] for e in events if e["type"] == "state"]
    assert states == ["building", "testing", "pushing", "ready"]
    assert any("test passed" in (e.get("line") or "") for e in events)
    follow = await client.get(f"/v1/packages/{package_id}/logs?follow=1")
    assert follow.content_type == "text/event-stream"
    names = [event.event async for event in iter_sse(follow)]
    assert names[-1] == "end" and names.count("state") == 4

    # No test container is left.
    left = await docker.containers.list(all=True, filters={"label": [f"org.premd.builder.test={package_id}"]})
    assert left == []

    # Delete: gone from the list, the get and the download.
    deleted = await client.delete(f"/v1/packages/{package_id}")
    assert deleted.status == 200, await deleted.text()
    assert (await client.get(f"/v1/packages/{package_id}")).status == 404
    assert (await client.get(f"/v1/packages/{package_id}.zip")).status == 404
    listed = await (await client.get("/v1/packages/")).json()
    assert all(p["ID"] != package_id for p in listed)


async def test_pinned_dependency_from_the_wheelhouse_and_identical_uploads_share_one_build(
    api: tuple[Client, list[str]], tmp_path: Path
) -> None:
    client, made = api
    data = zip_bytes(tmp_path, unique(six_files()))
    first, second = await asyncio.gather(upload(client, data), upload(client, data))
    a, b = await first.json(), await second.json()
    assert {first.status, second.status} == {202}, (a, b)
    assert a["ID"] == b["ID"]
    made.append(a["ID"])
    done = await wait_ended(client, a["ID"])
    assert done["Status"] == "ready", done
    assert done["Artifacts"][0]["Test"]["Output"] == "hello world (six 1.16.0)"
    logs = await client.get(f"/v1/packages/{a['ID']}/logs")
    events = [json.loads(line) for line in (await logs.text()).splitlines()]
    assert [e["status"] for e in events if e["type"] == "state"].count("building") == 1
    assert any("network none" in (e.get("line") or "") for e in events)
