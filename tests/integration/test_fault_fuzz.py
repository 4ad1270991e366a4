"""Every route of /openapi.json fuzzed with schemathesis against ``premd serve`` with the real Docker engine
(issue 9 fault suite): no 500, no hang, every status documented, every response matching its schema. Once as
premd starts by default (loopback, no token), once with ``PREMD_API_TOKEN`` set, fuzzed with the token and
without it (every refusal a documented 401 in premd's envelope).

Excluded: POST /v1/registries/ (a fuzzed URL would send premd's fetch off this machine; tests/integration/
test_fault_registry.py and test_registry_sync.py cover that route's inputs). The catalog's images point at a
loopback port where nothing listens, so a fuzzed download or start fails on this machine, never on the network.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import aiohttp
import pytest

from tests.integration.test_serve import PREMD, _env, _wait_health
from tests.testbed.registries import REGISTRIES_DIR
from tests.testbed.util import wait_until

ST = str(Path(sys.executable).parent / "st")
CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"
EXAMPLES = 6
SEED = 9
RUN_DEADLINE_S = 480


def _loopback_registry(tmp_path: Path) -> Path:
    entries = json.loads((REGISTRIES_DIR / "prem-daemon-mock-manifests.json").read_text())
    for entry in entries:
        for variant in entry.get("dockerImages", {}).values():
            variant["image"] = "127.0.0.1:9/premd-fuzz/" + variant["image"].rsplit("/", 1)[-1]
    path = tmp_path / "fuzz-registry.json"
    path.write_text(json.dumps(entries))
    return path


async def _serve(env: dict[str, str], log: Path) -> asyncio.subprocess.Process:
    """``premd serve`` with ``env``, once ready (NATS, components and the first reconcile)."""
    with log.open("wb") as out:
        premd = await asyncio.create_subprocess_exec(PREMD, "serve", env=env, stderr=out)
    port = int(env["PREMD_PORT"])
    await _wait_health(port, premd)
    headers = {"Authorization": f"Bearer {env['PREMD_API_TOKEN']}"} if "PREMD_API_TOKEN" in env else {}
    async with aiohttp.ClientSession(headers=headers) as http:

        async def ready() -> bool:
            async with http.get(f"http://127.0.0.1:{port}/readyz") as resp:
                return resp.status == 200

        await wait_until(ready, deadline_s=60, what="premd ready")
    return premd


async def _schemathesis(tmp_path: Path, name: str, *args: str) -> str:
    """One ``st run`` (its report kept as ``<name>.txt``); fails the test with the report unless it passed."""
    fuzz = await asyncio.create_subprocess_exec(
        ST, "run", *args, "--seed", str(SEED), "--request-timeout", "30", "--workers", "2", "--no-color",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, cwd=tmp_path,
    )  # fmt: skip
    async with asyncio.timeout(RUN_DEADLINE_S):
        out_bytes, _ = await fuzz.communicate()
    report = out_bytes.decode(errors="replace")
    (tmp_path / f"{name}.txt").write_text(report)
    assert fuzz.returncode == 0, report[-12000:]
    return report


TOKEN = "fuzz-" + "t" * 27
TOKEN_EXAMPLES = 3
"""Fewer than the open run, and no coverage phase: the handlers behind the guard are the same (the open run
covers them); what differs is the guard, which every case passes through."""


@pytest.mark.docker
async def test_every_route_holds_its_schema_under_fuzzing_with_an_api_token(tmp_path: Path) -> None:
    """With ``PREMD_API_TOKEN``: fuzzed with the token (and schemathesis' ``ignored_auth`` check: each operation
    sent again without it and with a wrong one must be refused), then fuzzed without it: every answer a 401 in
    premd's envelope, as documented, or the health check's 200."""
    env = _env(tmp_path, PREM_REGISTRY_URL=_loopback_registry(tmp_path).as_uri(), PREMD_API_TOKEN=TOKEN)
    base = f"http://127.0.0.1:{env['PREMD_PORT']}"
    log = tmp_path / "premd.log"
    premd = await _serve(env, log)
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/openapi.json", headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
                assert resp.status == 200
                spec = await resp.json()
        assert spec["security"] == [{"bearerAuth": []}]
        schema = tmp_path / "openapi.json"  # a file: the run without the token could not fetch it
        schema.write_text(json.dumps(spec))
        common = ["--url", base, "--exclude-operation-id", "post_v1_registries"]
        await _schemathesis(
            tmp_path, "with-token", str(schema), *common,
            "--header", f"Authorization: Bearer {TOKEN}",
            "--checks", CHECKS + ",ignored_auth",
            "--max-examples", str(TOKEN_EXAMPLES),
            "--phases", "examples,fuzzing",
        )  # fmt: skip
        await _schemathesis(
            tmp_path, "without-token", str(schema), *common,
            "--checks", CHECKS,
            "--max-examples", str(TOKEN_EXAMPLES),
            "--phases", "examples,fuzzing",
        )  # fmt: skip
        async with aiohttp.ClientSession() as http:  # what the run without the token was answered: the envelope
            for headers, code in (
                ({}, "auth.required"),
                ({"Authorization": "Bearer wrong"}, "auth.invalid"),
                ({"Authorization": TOKEN}, "auth.invalid"),  # no scheme
            ):
                async with http.get(f"{base}/v1/services/", headers=headers) as resp:
                    body = await resp.json()
                    assert resp.status == 401 and body["detail"]["code"] == code, (headers, body)
                    assert resp.headers["WWW-Authenticate"] == "Bearer"
        assert premd.returncode is None, "premd died under fuzzing"
        said = log.read_text()
        assert "ERROR gateway.errors" not in said, said[-8000:]
    finally:
        if premd.returncode is None:
            premd.terminate()
            async with asyncio.timeout(60):
                await premd.wait()


@pytest.mark.docker
async def test_every_route_holds_its_schema_under_fuzzing(tmp_path: Path) -> None:
    env = _env(tmp_path, PREM_REGISTRY_URL=_loopback_registry(tmp_path).as_uri())
    port = int(env["PREMD_PORT"])
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "premd.log"
    with log.open("wb") as out:
        premd = await asyncio.create_subprocess_exec(PREMD, "serve", env=env, stderr=out)
    try:
        await _wait_health(port, premd)
        async with aiohttp.ClientSession() as http:

            async def ready() -> bool:
                async with http.get(f"{base}/readyz") as resp:
                    return resp.status == 200

            await wait_until(ready, deadline_s=60, what="premd ready")
        fuzz = await asyncio.create_subprocess_exec(
            ST, "run", f"{base}/openapi.json",
            "--checks", CHECKS,
            "--max-examples", str(EXAMPLES),
            "--seed", str(SEED),
            "--request-timeout", "30",
            "--workers", "2",
            "--exclude-operation-id", "post_v1_registries",
            "--no-color",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, cwd=tmp_path,
        )  # fmt: skip
        out_bytes, _ = await asyncio.wait_for(fuzz.communicate(), RUN_DEADLINE_S)
        report = out_bytes.decode(errors="replace")
        (tmp_path / "schemathesis.txt").write_text(report)
        assert fuzz.returncode == 0, report[-12000:]
        assert premd.returncode is None, "premd died under fuzzing"
        said = log.read_text()
        assert "ERROR gateway.errors" not in said, said[-8000:]  # an unhandled handler failure (a 500) logs this
    finally:
        if premd.returncode is None:
            premd.terminate()
            await asyncio.wait_for(premd.wait(), 60)
