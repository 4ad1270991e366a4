"""The ``premd`` command line as people and scripts run it: a subprocess against a running ``premd serve``.

One premd per module (embedded NATS, real Docker) with a registry file of reference services whose images sit
in the test bed's OCI registry. A pull that must stay in flight (Ctrl-C, re-attach, cancel) points at a
registry that accepts connections and never answers.
"""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiodocker
import pytest

from tests.support.builder_bed import remove_package_images, unique
from tests.support.packages import hello_files, write_package_dir
from tests.testbed.images import build_image
from tests.testbed.oci_registry import OciRegistry
from tests.testbed.util import free_port, run_isolated, wait_until_sync

pytestmark = pytest.mark.docker

PREMD = str(Path(sys.executable).parent / "premd")
BLOB_BYTES = 8 * 1024 * 1024


@dataclass
class Daemon:
    url: str
    env: dict[str, str]
    chat: str
    """A reference service (its image in the OCI registry)."""
    other: str
    """A second one, on the same image, never started."""
    stalled: str
    """Its image is on a registry that never answers: its pull stays in flight until cancelled."""
    registry_dir: Path
    packages: list[str]
    """IDs of the packages built, whose images are removed at the end."""

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [PREMD, *args], env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )

    def json(self, *args: str, timeout: float = 120) -> Any:
        done = self.cli(*args, "--json", timeout=timeout)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    def state(self, service_id: str) -> dict[str, Any]:
        found: dict[str, Any] = self.json("show", service_id)
        return found


def _manifest(service_id: str, image: str, interface: str) -> dict[str, Any]:
    return {
        "id": service_id,
        "name": f"CLI {service_id}",
        "description": "reference service",
        "documentation": "",
        "icon": "",
        "modelInfo": {"memoryRequirements": 64},
        "interfaces": [interface],
        "dockerImages": {"cpu": {"size": 50_000_000, "image": image}},
        "defaultPort": 8000,
        "defaultExternalPort": free_port(),
        "volumePath": "/data",
    }


class SilentRegistry:
    """Accepts TCP connections and never answers: a Docker pull from it hangs until it is cancelled."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]
        self._held: list[socket.socket] = []
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        self.sock.settimeout(0.2)
        while not self._closed.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._held.append(conn)

    def close(self) -> None:
        self._closed.set()
        self._thread.join(5)
        for conn in self._held:
            conn.close()
        self.sock.close()


@pytest.fixture(scope="module")
def daemon(
    tmp_path_factory: pytest.TempPathFactory, ref_image: str, base_image: str, oci_registry: OciRegistry
) -> Iterator[Daemon]:
    tmp = tmp_path_factory.mktemp("cli")
    name = f"premd-test/cli-{uuid.uuid4().hex[:8]}"

    async def push() -> str:
        """The reference service plus a layer of its own, so that a pull downloads real bytes."""
        async with aiodocker.Docker() as docker:
            local = f"{name}-local:1"
            dockerfile = f"FROM {ref_image}\nCOPY blob /opt/blob\n".encode()
            await build_image(docker, local, {"Dockerfile": dockerfile, "blob": os.urandom(BLOB_BYTES)})
            remote = await oci_registry.push(docker, local, name=name)
            for tag in (remote, local):
                await docker.images.delete(tag, force=True)
            return remote

    image = run_isolated(push)
    silent = SilentRegistry()
    suffix = uuid.uuid4().hex[:6]
    chat, other, stalled = f"cli-chat-{suffix}", f"cli-other-{suffix}", f"cli-stalled-{suffix}"
    registry_file = tmp / "registry.json"
    registry_file.write_text(
        json.dumps(
            [
                _manifest(chat, image, "chat"),
                _manifest(other, image, "embeddings"),
                _manifest(stalled, f"127.0.0.1:{silent.port}/premd-test/never:1", "chat"),
            ]
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREMD_", "PREM_", "NO_COLOR"))}
    port = free_port()
    env.update(
        PREMD_DATA_DIR=str(tmp / "data"),
        PREMD_PORT=str(port),
        PREMD_NATS_PORT=str(free_port()),
        PREM_REGISTRY_URL=registry_file.as_uri(),
        PREMD_REGISTRY_FILE_DIR=str(tmp),  # `premd registry add file://...` may name files there
        # the builder: the test bed's base image (nothing is downloaded) and its OCI registry
        PREMD_BUILDER_BASE_IMAGES=f"3.11={base_image}",
        PREMD_BUILDER_PUSH_REGISTRY=oci_registry.host,
        PREMD_BUILDER_SETUP_TIMEOUT_S="30",
        PREMD_BUILDER_RUN_TIMEOUT_S="30",
        PREMD_BUILDER_TEST_MEMORY_BYTES=str(256 * 1024 * 1024),
    )
    proc = subprocess.Popen([PREMD, "serve"], env=env, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    bed = Daemon(url=url, env=env, chat=chat, other=other, stalled=stalled, registry_dir=tmp, packages=[])
    try:

        def listed() -> bool:
            assert proc.poll() is None, "premd exited during start-up"
            try:
                with urllib.request.urlopen(f"{url}/v1/services/{stalled}") as resp:
                    return bool(resp.status == 200)
            except OSError:
                return False

        wait_until_sync(listed, timeout=60, what="premd serving the registry")

        def ready() -> bool:  # every component's process is up (the gateway lists services before they are)
            try:
                with urllib.request.urlopen(f"{url}/readyz") as resp:
                    return bool(resp.status == 200)
            except OSError:
                return False

        wait_until_sync(ready, timeout=60, what="premd ready")
        yield bed
    finally:
        bed.cli("stop", chat)
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        silent.close()

        async def clean() -> None:
            async with aiodocker.Docker() as docker:
                try:
                    await docker.images.delete(image, force=True)
                except aiodocker.DockerError:
                    pass
                await remove_package_images(docker, bed.packages)

        run_isolated(clean)


def _in_pty(argv: list[str], env: dict[str, str], timeout: float = 120) -> tuple[int, str]:
    """Run on a terminal (rich draws its live bar only there); exit code and everything it wrote."""
    main, child = pty.openpty()
    proc = subprocess.Popen(argv, env={**env, "COLUMNS": "120"}, stdin=child, stdout=child, stderr=child)
    os.close(child)
    out = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([main], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(main, 65536)
                except OSError:  # the child closed the terminal
                    break
                if not chunk:
                    break
                out += chunk
            elif proc.poll() is not None:
                break
        return proc.wait(30), out.decode(errors="replace")
    finally:
        os.close(main)
        if proc.poll() is None:
            proc.kill()


class Lines:
    """A running command's stdout, read line by line with a deadline."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.seen: list[str] = []

    def until(self, predicate: Any, timeout: float = 60) -> str:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.5)
            if not ready:
                continue
            line = self.proc.stdout.readline()
            if not line:
                break
            self.seen.append(line)
            if predicate(line):
                return line
        raise AssertionError(f"no such line within {timeout} s; saw {self.seen[-20:]}")


# ---------------------------------------------------------------- no daemon


def test_unreachable_daemon_is_one_line_and_exit_1() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    for args in (["ls"], ["status"], ["pull", "x"], ["logs", "x", "-f"], ["registry", "ls"]):
        done = subprocess.run([PREMD, "--url", url, *args], capture_output=True, text=True, timeout=30, check=False)
        assert done.returncode == 1, (args, done)
        assert done.stdout == ""
        lines = done.stderr.splitlines()
        hint = "is `premd serve` running? (set --url or PREMD_URL for another one)"
        assert lines == [f"premd: cannot reach premd at {url}: {hint}"]
    argv = [PREMD, "ls", "--json", "--url", url]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 1
    assert json.loads(done.stderr)["code"] == "cli.unreachable"


def test_version_and_completion() -> None:
    done = subprocess.run([PREMD, "--version"], capture_output=True, text=True, timeout=30, check=True)
    assert done.stdout.strip().startswith("premd ")
    for shell in ("bash", "zsh"):
        script = subprocess.run([PREMD, "completion", shell], capture_output=True, text=True, timeout=30, check=True)
        for command in ("serve", "pull", "logs", "registry", "events"):
            assert command in script.stdout, (shell, command)


# ---------------------------------------------------------------- with premd


def test_status(daemon: Daemon) -> None:
    status = daemon.json("status")
    assert status["ready"] is True and status["bus"] == "connected"
    assert set(status["components"]) == {"gateway", "scheduler", "builder", "registry_sync"}
    assert status["docker"] is True
    human = daemon.cli("status")
    assert human.returncode == 0 and "docker engine" in human.stdout and "available" in human.stdout


def test_ls_and_show(daemon: Daemon) -> None:
    listed = {s["id"]: s for s in daemon.json("ls")}
    assert {daemon.chat, daemon.other, daemon.stalled} <= set(listed)
    assert listed[daemon.other]["state"] in ("available", "downloaded")
    chat_only = daemon.json("ls", "--interface", "embeddings")
    assert daemon.other in {s["id"] for s in chat_only} and daemon.chat not in {s["id"] for s in chat_only}
    human = daemon.cli("ls", "--interface", "embeddings")
    assert human.returncode == 0 and "INTERFACES" in human.stdout and daemon.other in human.stdout
    shown = daemon.json("show", daemon.other)
    assert shown["id"] == daemon.other and shown["interfaces"] == ["embeddings"]
    missing = daemon.cli("show", "no-such-service")
    assert missing.returncode == 1 and missing.stderr.strip() == "premd: no service no-such-service (see `premd ls`)"


def test_pull_shows_progress_to_100_percent(daemon: Daemon) -> None:
    code, screen = _in_pty([PREMD, "pull", daemon.other], daemon.env)
    assert code == 0, screen
    assert "100%" in screen and f"Downloaded {daemon.other}" in screen, screen
    assert "MB" in screen  # the bar counts the bytes of the image's own layer
    assert daemon.state(daemon.other)["downloaded"] is True
    # --json: the pull's events, one a line, the last one succeeded at 100 %
    events = [json.loads(line) for line in daemon.cli("pull", daemon.other, "--json").stdout.splitlines()]
    assert events[-1]["type"] == "succeeded" and events[-1]["percentage"] == 100
    first = [json.loads(line) for line in daemon.cli("rm", daemon.other, "--json").stdout.splitlines()]
    assert first[0]["message"] == f"Service {daemon.other} removed successfully."
    # without a terminal: a line every 10 %, bytes counted, the last at 100 %
    plain = daemon.cli("pull", daemon.other)
    assert plain.returncode == 0, plain.stderr
    progress = [line for line in plain.stdout.splitlines() if line.startswith(f"{daemon.other}: ")]
    assert progress[-1].startswith(f"{daemon.other}: 100% (") and " MB of " in progress[-1], plain.stdout
    assert plain.stdout.splitlines()[-1].startswith(f"Downloaded {daemon.other} (")


def test_pull_detach_reattach_cancel(daemon: Daemon) -> None:
    sid = daemon.stalled
    first = subprocess.Popen(
        [PREMD, "pull", sid], env=daemon.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_until_sync(lambda: daemon.state(sid)["state"] == "pulling", timeout=30, what="the pull in flight")
        first.send_signal(signal.SIGINT)  # Ctrl-C: detach
        _, err = first.communicate(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 130
    assert "Detached; the download goes on" in err
    assert daemon.state(sid)["state"] == "pulling"  # not cancelled
    again = subprocess.Popen(
        [PREMD, "pull", sid], env=daemon.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert again.stderr is not None
        assert "Joining the download" in again.stderr.readline()
        cancelled = daemon.json("pull", "--cancel", sid)
        assert cancelled["service_id"] == sid and cancelled["kind"] == "pull"
        _, err = again.communicate(timeout=30)
    finally:
        if again.poll() is None:
            again.kill()
    assert again.returncode == 1 and err.strip() == f"premd: the download of {sid} was cancelled"
    assert daemon.state(sid)["state"] == "available"
    nothing = daemon.cli("pull", "--cancel", sid)
    assert nothing.returncode == 1 and f"no download of {sid} is in progress" in nothing.stderr


def test_run_logs_restart_stop_rm(daemon: Daemon) -> None:
    sid = daemon.chat
    done = daemon.cli("run", sid, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"{sid} is ready." in done.stdout
    assert f"{daemon.url}/proxy/{sid}" in done.stdout and f"{daemon.url}/v1" in done.stdout
    shown = daemon.state(sid)
    assert shown["state"] == "ready" and shown["observed"]["ready"] is True
    again = daemon.json("run", sid)  # already running: answers at once
    assert again["ready"] is True and again["openai_base_url"] == f"{daemon.url}/v1"

    # logs -f prints a line the service writes after the command started
    follow = subprocess.Popen(
        [PREMD, "logs", sid, "-f", "--tail", "1"], env=daemon.env, stdout=subprocess.PIPE, text=True
    )
    try:
        lines = Lines(follow)
        lines.until(lambda line: "ref-service" in line)  # the tail: the session is up
        marker = f"/marker-{uuid.uuid4().hex}"
        with pytest.raises(urllib.error.HTTPError) as answer:  # the reference service has no such path ...
            urllib.request.urlopen(f"{daemon.url}/proxy/{sid}{marker}")
        answer.value.close()
        assert answer.value.code == 404  # ... and logs the request all the same
        lines.until(lambda line: marker in line)
    finally:
        follow.send_signal(signal.SIGINT)
        follow.wait(30)
        assert follow.stdout is not None
        follow.stdout.close()
    assert follow.returncode == 0
    tail = daemon.json("logs", sid, "--tail", "2")
    assert tail["service_id"] == sid and len(tail["lines"]) == 2
    assert any(marker in line for line in daemon.json("logs", sid)["lines"])

    restarted = daemon.json("restart", sid, timeout=300)
    assert restarted["ready"] is True
    stopped = daemon.json("stop", sid)
    assert stopped["message"] == f"Service {sid} successfully."
    assert daemon.state(sid)["state"] == "downloaded"
    removed = daemon.cli("rm", sid)
    assert removed.returncode == 0 and removed.stdout.strip() == f"Service {sid} removed successfully."
    assert daemon.state(sid)["downloaded"] is False


def test_logs_of_a_service_never_started(daemon: Daemon) -> None:
    done = daemon.cli("logs", daemon.stalled)
    assert done.returncode == 1
    assert done.stderr.strip() == f"premd: service {daemon.stalled} has no container: start it first"


def test_registry_commands(daemon: Daemon) -> None:
    extra = daemon.registry_dir / "extra.json"
    extra.write_text(json.dumps([_manifest(f"cli-extra-{uuid.uuid4().hex[:6]}", "premd-test/x:1", "chat")]))
    before = daemon.json("registry", "ls")
    added = daemon.json("registry", "add", extra.as_uri())
    assert added == {"url": extra.as_uri()}
    assert [r["url"] for r in daemon.json("registry", "ls")] == [r["url"] for r in before] + [extra.as_uri()]
    duplicate = daemon.cli("registry", "add", extra.as_uri())
    assert duplicate.returncode == 1 and duplicate.stderr.startswith("premd: Failed to add registry")
    removed = daemon.json("registry", "rm", extra.as_uri())
    assert removed["message"] == f"Registry {extra.as_uri()} removed successfully."
    assert daemon.json("registry", "ls") == before


def test_stats(daemon: Daemon) -> None:
    stats = daemon.json("stats")
    assert stats["host"]["memory_limit"] > 0 and isinstance(stats["services"], list)
    human = daemon.cli("stats")
    assert human.returncode == 0 and "memory" in human.stdout


def test_events_follow(daemon: Daemon) -> None:
    sid = daemon.other
    for mode in ("--json", None):
        args = [PREMD, "events", "--service", sid, *([mode] if mode else [])]
        proc = subprocess.Popen(args, env=daemon.env, stdout=subprocess.PIPE, text=True)
        try:
            lines = Lines(proc)
            # the stream starts at "now": pull until an event shows up (the first pull may race the subscription)
            deadline = time.monotonic() + 60
            line = ""
            while True:
                assert daemon.cli("pull", sid).returncode == 0
                try:
                    line = lines.until(lambda line: "succeeded" in line, timeout=10)
                    break
                except AssertionError:
                    assert time.monotonic() < deadline
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(30)
            assert proc.stdout is not None
            proc.stdout.close()
        assert proc.returncode == 0
        if mode == "--json":
            event = json.loads(line)
            assert event["event"] == "succeeded" and event["data"]["service_id"] == sid
            assert event["data"]["kind"] == "pull" and isinstance(event["sequence"], int)
        else:
            assert f"{sid} pull succeeded: Download complete" in line


def test_openapi_documents_the_new_routes(daemon: Daemon) -> None:
    with urllib.request.urlopen(f"{daemon.url}/openapi.json") as resp:
        paths = json.load(resp)["paths"]
    assert "get" in paths["/v1/logs/{service_id}"]
    assert {"post", "delete"} <= set(paths["/v1/pulls/{service_id}"])
    assert "get" in paths["/v1/states/"] and "get" in paths["/v1/system"]


def test_package_push_folder_to_ready_then_ls_show_pull_rm(daemon: Daemon, tmp_path: Path) -> None:
    folder = write_package_dir(tmp_path / "hello", unique(hello_files()))
    done = daemon.cli("package", "push", str(folder), timeout=600)
    assert done.returncode == 0, done.stderr
    [id_line] = [line for line in done.stdout.splitlines() if line.startswith("id ")]
    package_id = id_line.split()[1]
    daemon.packages.append(package_id)
    assert len(package_id) == 64
    assert "ready" in done.stdout and f"premd-test/hello:{package_id[:12]}-docker-cpu" in done.stdout
    assert "[4/4] ready" in done.stdout  # the stages, as plain lines without a terminal

    # the same folder again, with --json: the same ID (the zip is made the same way), ready at once
    again = daemon.json("package", "push", str(folder))
    assert again["ID"] == package_id and again["Status"] == "ready"
    listed = daemon.json("package", "ls")
    assert package_id in {p["ID"] for p in listed}
    shown = daemon.json("package", "show", package_id[:12])
    assert shown["ID"] == package_id and shown["Artifacts"][0]["Test"]["Status"] == "passed"
    dest = tmp_path / "copy.zip"
    pulled = daemon.json("package", "pull", package_id[:12], "-o", str(dest))
    assert pulled == {"id": package_id, "path": str(dest), "size": dest.stat().st_size}
    assert daemon.json("package", "rm", package_id)["message"]
    gone = daemon.cli("package", "show", package_id)
    assert gone.returncode == 1 and gone.stderr.startswith("premd: ")


def test_package_push_of_a_folder_without_jid_yaml(daemon: Daemon, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "model.py").write_text("x = 1\n")
    done = daemon.cli("package", "push", str(tmp_path / "empty"))
    assert done.returncode == 1
    assert done.stderr.strip() == f"premd: {tmp_path / 'empty'} has no jid.yaml at its top: is it the package's folder?"
