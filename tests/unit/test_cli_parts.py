"""The command line's pure parts: the deterministic package zip, where the daemon and its token are found,
error bodies as one line, states and event lines for people."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import httpx
import pytest

from builder.package import PackageLimits, inspect_package
from premd.client import _message, resolve
from premd.commands.events import describe
from premd.commands.services import state_of
from premd.package_zip import FIXED_TIME, PackageFolderError, zip_folder
from premd.ui import human_bytes
from tests.support.packages import hello_files, write_package_dir, write_package_zip


def _hello(root: Path) -> Path:
    folder = write_package_dir(root, {**hello_files(), "pkg/tool.sh": "#!/bin/sh\n", "b.txt": "b", "a.txt": "a"})
    (folder / "pkg" / "tool.sh").chmod(0o755)
    for junk in (".DS_Store", "__pycache__/model.cpython-311.pyc", ".git/HEAD"):
        (folder / junk).parent.mkdir(parents=True, exist_ok=True)
        (folder / junk).write_text("junk")
    return folder


def test_the_same_folder_zips_to_the_same_bytes_sorted_with_fixed_times(tmp_path: Path) -> None:
    folder = _hello(tmp_path / "hello")
    first = zip_folder(folder, tmp_path / "1.zip").read_bytes()
    os.utime(folder / "a.txt", (1_700_000_000, 1_700_000_000))  # another mtime changes nothing
    second = zip_folder(folder, tmp_path / "2.zip").read_bytes()
    assert first == second
    with zipfile.ZipFile(tmp_path / "1.zip") as zf:
        names = zf.namelist()
        assert names == sorted(names, key=str.encode)
        assert names == ["a.txt", "b.txt", "jid.yaml", "model.py", "pkg/tool.sh"]
        assert {info.date_time for info in zf.infolist()} == {FIXED_TIME}
        modes = {info.filename: info.external_attr >> 16 for info in zf.infolist()}
    assert modes["pkg/tool.sh"] == 0o100755 and modes["a.txt"] == 0o100644


def test_the_zip_has_the_id_the_builder_gives_the_same_files_zipped_otherwise(tmp_path: Path) -> None:
    files = hello_files()
    ours = zip_folder(write_package_dir(tmp_path / "p", files), tmp_path / "ours.zip")
    theirs = write_package_zip(tmp_path / "theirs.zip", files)
    limits = PackageLimits.from_settings()
    assert inspect_package(ours, limits).id == inspect_package(theirs, limits).id


def test_links_and_folders_without_jid_yaml_are_refused(tmp_path: Path) -> None:
    folder = write_package_dir(tmp_path / "p", hello_files())
    (folder / "link").symlink_to(folder / "model.py")
    with pytest.raises(PackageFolderError, match="symbolic link"):
        zip_folder(folder, tmp_path / "x.zip")
    (folder / "link").unlink()
    (folder / "jid.yaml").unlink()
    with pytest.raises(PackageFolderError, match=r"no jid\.yaml"):
        zip_folder(folder, tmp_path / "x.zip")


def test_daemon_url_and_token_from_flags_environment_or_data_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [n for n in os.environ if n.startswith(("PREMD_", "PREM_"))]:  # other tests' settings too
        monkeypatch.delenv(name)
    monkeypatch.setenv("PREMD_DATA_DIR", str(tmp_path))
    assert resolve(None, None).url == "http://127.0.0.1:54321" and resolve(None, None).token is None
    (tmp_path / "api_token").write_text("from-file\n")
    assert resolve(None, None).token == "from-file"
    monkeypatch.setenv("PREMD_API_TOKEN", "daemon")
    monkeypatch.setenv("PREMD_PORT", "4000")
    assert resolve(None, None) == resolve("http://127.0.0.1:4000/", "daemon")
    monkeypatch.setenv("PREMD_URL", "http://box:1")
    monkeypatch.setenv("PREMD_TOKEN", "env")
    assert (resolve(None, None).url, resolve(None, None).token) == ("http://box:1", "env")
    assert resolve("http://flag:2", "flag").token == "flag"


def test_error_bodies_become_one_message() -> None:
    premd = httpx.Response(400, json={"detail": {"message": "Service not found.", "code": "service.not_found"}})
    assert _message(premd) == ("Service not found.", "service.not_found")
    fastapi = httpx.Response(422, json={"detail": [{"loc": ["query", "tail"], "msg": "expected all", "type": "x"}]})
    assert _message(fastapi) == ("query.tail: expected all", "request.invalid")
    assert _message(httpx.Response(404, json={"detail": "Not Found"})) == ("Not Found", None)
    assert _message(httpx.Response(502, text="<html>")) == ("HTTP 502 Bad Gateway", None)


def test_states_and_event_lines() -> None:
    assert state_of({"downloaded": True}, None) == "downloaded"
    assert state_of({"supported": True}, {"phase": "stopped"}) == "available"
    assert state_of({"supported": False}, None) == "unsupported"
    assert state_of({"downloaded": True}, {"phase": "ready"}) == "ready"
    progress = {"type": "progress", "kind": "pull", "service_id": "s", "percentage": 41.6, "bytes_total": 2_000_000}
    assert describe("progress", progress).endswith("s pull progress: 42% of 2.0 MB")
    assert "catalog changed: added 1, removed 0, changed 2" in describe(
        "catalog.changed", {"added": ["a"], "removed": [], "changed": ["b", "c"]}
    )
    assert human_bytes(999) == "999 B" and human_bytes(1_500_000_000) == "1.5 GB" and human_bytes(None) == "-"
