"""The package ID: a sha256 over the normalised content manifest, independent of how the files were zipped."""

from __future__ import annotations

import hashlib
import shutil
import unicodedata
import zipfile
from pathlib import Path

from builder.package import ID_SCHEME, PackageLimits, inspect_package
from tests.support.packages import hello_files, write_package_dir, write_package_zip

LIMITS = PackageLimits.from_settings()
FILES = {**hello_files(), "lib/util.py": "X = 1\n", "run.sh": "#!/bin/sh\n"}


def _id(tmp_path: Path, name: str, files: dict[str, str | bytes] = FILES, **kwargs: object) -> str:
    return inspect_package(write_package_zip(tmp_path / name, files, **kwargs), LIMITS).id  # type: ignore[arg-type]


def test_id_is_the_documented_manifest_hash(tmp_path: Path) -> None:
    lines = [f"{ID_SCHEME}\n".encode()]
    for path in sorted(FILES, key=str.encode):
        content = FILES[path]
        data = content.encode() if isinstance(content, str) else content
        exec_bit = 1 if path == "run.sh" else 0
        lines.append(f"{path}\0{exec_bit}\0{len(data)}\0{hashlib.sha256(data).hexdigest()}\n".encode())
    expected = hashlib.sha256(b"".join(lines)).hexdigest()
    assert _id(tmp_path, "a.zip", executable=["run.sh"]) == expected


def test_same_files_zipped_differently_give_the_same_id(tmp_path: Path) -> None:
    base = _id(tmp_path, "a.zip")
    assert _id(tmp_path, "b.zip", order=sorted(FILES, reverse=True)) == base
    assert _id(tmp_path, "c.zip", compression=zipfile.ZIP_STORED) == base
    assert _id(tmp_path, "d.zip", compression=zipfile.ZIP_LZMA) == base
    assert _id(tmp_path, "e.zip", date_time=(2030, 1, 2, 3, 4, 6)) == base
    assert _id(tmp_path, "f.zip", folders=True) == base
    raw = {(tmp_path / "a.zip").read_bytes(), (tmp_path / "b.zip").read_bytes(), (tmp_path / "e.zip").read_bytes()}
    assert len(raw) == 3  # the archives really differ


def test_nfd_names_from_macos_give_the_nfc_id(tmp_path: Path) -> None:
    name = "données/café.txt"
    nfc = {**FILES, unicodedata.normalize("NFC", name): "x"}
    nfd = {**FILES, unicodedata.normalize("NFD", name): "x"}
    assert _id(tmp_path, "nfc.zip", nfc) == _id(tmp_path, "nfd.zip", nfd)


def test_any_change_gives_another_id(tmp_path: Path) -> None:
    base = _id(tmp_path, "a.zip")
    changed_content = {**FILES, "lib/util.py": "X = 2\n"}
    renamed = {k.replace("lib/util.py", "lib/util2.py"): v for k, v in FILES.items()}
    added_empty = {**FILES, "empty.txt": ""}
    # Content moved across a file boundary must not collide (the original's later scheme did).
    moved = {**FILES, "lib/util.py": "X = 1\n#", "run.sh": "!/bin/sh\n"}
    ids = {
        base,
        _id(tmp_path, "b.zip", changed_content),
        _id(tmp_path, "c.zip", renamed),
        _id(tmp_path, "d.zip", added_empty),
        _id(tmp_path, "e.zip", moved),
        _id(tmp_path, "f.zip", executable=["run.sh"]),
    }
    assert len(ids) == 6


def test_a_zip_made_by_another_tool_has_the_same_id(tmp_path: Path) -> None:
    src = write_package_dir(tmp_path / "src", FILES, executable=["run.sh"])
    other = Path(shutil.make_archive(str(tmp_path / "made"), "zip", root_dir=src))
    assert inspect_package(other, LIMITS).id == _id(tmp_path, "ours.zip", executable=["run.sh"])
