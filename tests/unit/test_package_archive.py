"""Package zips: every hostile or broken zip is refused with its code, before anything is trusted."""

from __future__ import annotations

import os
import struct
import zipfile
from pathlib import Path

import pytest

from builder.package import PackageInvalidError, PackageLimits, extract_package, inspect_package
from common.errors import PACKAGE_HTTP_STATUS, Code, InvalidError, error_for
from tests.support.packages import hello_files, hello_zip, write_package_zip

LIMITS = PackageLimits.from_settings()


def _code(zip_path: Path, limits: PackageLimits = LIMITS) -> str:
    with pytest.raises(PackageInvalidError) as info:
        inspect_package(zip_path, limits)
    assert isinstance(info.value, InvalidError)
    assert info.value.code in PACKAGE_HTTP_STATUS
    return info.value.code


def test_hello_package_is_accepted(tmp_path: Path) -> None:
    pkg = inspect_package(hello_zip(tmp_path / "h.zip"), LIMITS)
    assert [f.path for f in pkg.files] == ["jid.yaml", "model.py"]
    assert len(pkg.id) == 64 and int(pkg.id, 16) >= 0
    assert pkg.config.model == "model.py:Model"


def test_not_a_zip(tmp_path: Path) -> None:
    path = tmp_path / "x.zip"
    path.write_bytes(b"just some text, not an archive\n" * 10)
    assert _code(path) == Code.PACKAGE_NOT_ZIP


def test_truncated_zip(tmp_path: Path) -> None:
    whole = hello_zip(tmp_path / "h.zip").read_bytes()
    path = tmp_path / "cut.zip"
    path.write_bytes(whole[: len(whole) // 2])
    assert _code(path) == Code.PACKAGE_TRUNCATED


def test_corrupt_entry_data(tmp_path: Path) -> None:
    files = {**hello_files(), "data.bin": os.urandom(4096)}
    path = write_package_zip(tmp_path / "c.zip", files, compression=zipfile.ZIP_STORED)
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("data.bin")
    raw[info.header_offset + 30 + len("data.bin") + 100] ^= 0xFF  # flip one byte of the stored data
    path.write_bytes(bytes(raw))
    assert _code(path) == Code.PACKAGE_CORRUPT


@pytest.mark.parametrize("name", ["../evil.py", "a/../../evil.py", "/etc/evil.py", "C:/evil.py", "a\\..\\b.py"])
def test_unsafe_paths(tmp_path: Path, name: str) -> None:
    path = write_package_zip(tmp_path / "u.zip", hello_files(), entries=[(name, "x")])
    assert _code(path) == Code.PACKAGE_UNSAFE_PATH


def test_symlink(tmp_path: Path) -> None:
    path = write_package_zip(tmp_path / "s.zip", hello_files(), symlinks={"secrets": "/etc/shadow"})
    assert _code(path) == Code.PACKAGE_SYMLINK


def test_duplicate_names(tmp_path: Path) -> None:
    path = write_package_zip(tmp_path / "d.zip", hello_files(), entries=[("model.py", "class Model: pass\n")])
    assert _code(path) == Code.PACKAGE_DUPLICATE_ENTRY


def test_names_differing_in_case_only(tmp_path: Path) -> None:
    path = write_package_zip(tmp_path / "d.zip", {**hello_files(), "Model.py": "x = 1\n"})
    assert _code(path) == Code.PACKAGE_DUPLICATE_ENTRY


def test_file_and_folder_with_one_name(tmp_path: Path) -> None:
    path = write_package_zip(tmp_path / "d.zip", {**hello_files(), "lib": "x", "lib/a.py": "y"})
    assert _code(path) == Code.PACKAGE_DUPLICATE_ENTRY


def test_macos_metadata_is_refused_with_a_hint(tmp_path: Path) -> None:
    path = write_package_zip(tmp_path / "m.zip", {**hello_files(), "__MACOSX/._model.py": "junk"})
    with pytest.raises(PackageInvalidError) as info:
        inspect_package(path, LIMITS)
    assert info.value.code == Code.PACKAGE_OS_METADATA and "__MACOSX" in info.value.message


def test_too_many_entries(tmp_path: Path) -> None:
    files = {**hello_files(), **{f"f{i}.txt": "x" for i in range(10)}}
    path = write_package_zip(tmp_path / "n.zip", files)
    limits = PackageLimits(max_upload_bytes=10**9, max_uncompressed_bytes=10**9, max_entries=5, max_ratio=100)
    assert _code(path, limits) == Code.PACKAGE_TOO_MANY_ENTRIES


def test_upload_over_the_size_limit(tmp_path: Path) -> None:
    path = write_package_zip(tmp_path / "big.zip", {**hello_files(), "w.bin": os.urandom(50_000)})
    limits = PackageLimits(max_upload_bytes=10_000, max_uncompressed_bytes=10**9, max_entries=100, max_ratio=100)
    assert _code(path, limits) == Code.PACKAGE_TOO_LARGE


def test_total_uncompressed_over_the_limit(tmp_path: Path) -> None:
    path = write_package_zip(tmp_path / "t.zip", {**hello_files(), "w.bin": os.urandom(200_000)})
    limits = PackageLimits(max_upload_bytes=10**9, max_uncompressed_bytes=100_000, max_entries=100, max_ratio=100)
    assert _code(path, limits) == Code.PACKAGE_TOO_LARGE


def test_compression_ratio_bomb(tmp_path: Path) -> None:
    path = write_package_zip(tmp_path / "b.zip", {**hello_files(), "zeros.bin": bytes(8 * 1024 * 1024)})
    limits = PackageLimits(max_upload_bytes=10**9, max_uncompressed_bytes=10**10, max_entries=100, max_ratio=100)
    assert _code(path, limits) == Code.PACKAGE_ZIP_BOMB


def _patch_sizes(path: Path, name: str, size: int) -> None:
    """Make both headers of entry *name* claim *size* uncompressed bytes (the data stays as it is)."""
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(name)
    struct.pack_into("<I", raw, info.header_offset + 22, size)
    pos = raw.find(b"PK\x01\x02")
    while pos != -1:
        name_len = struct.unpack_from("<H", raw, pos + 28)[0]
        if raw[pos + 46 : pos + 46 + name_len] == name.encode():
            struct.pack_into("<I", raw, pos + 24, size)
        pos = raw.find(b"PK\x01\x02", pos + 4)
    path.write_bytes(bytes(raw))


def test_headers_that_understate_the_size_do_not_get_through(tmp_path: Path) -> None:
    # Headers claim 100 bytes; the data inflates to 3 MiB. Counting what is decompressed (or the CRC) stops it.
    path = write_package_zip(tmp_path / "lie.zip", {**hello_files(), "zeros.bin": bytes(3 * 1024 * 1024)})
    _patch_sizes(path, "zeros.bin", 100)
    limits = PackageLimits(max_upload_bytes=10**9, max_uncompressed_bytes=1024 * 1024, max_entries=100, max_ratio=10)
    assert _code(path, limits) in (Code.PACKAGE_ZIP_BOMB, Code.PACKAGE_TOO_LARGE, Code.PACKAGE_CORRUPT)
    dest = tmp_path / "out"
    with pytest.raises(PackageInvalidError):
        extract_package(path, dest, limits)
    written = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
    assert written <= 1024 * 1024 + 256 * 1024


def test_overlapping_entries_are_a_bomb(tmp_path: Path) -> None:
    # Two central-directory records pointing at the same local header: the overlapping-entry zip bomb.
    path = write_package_zip(tmp_path / "o.zip", {**hello_files(), "a.txt": "a" * 1000})
    raw = bytearray(path.read_bytes())
    pos = raw.find(b"PK\x01\x02")
    offsets = []
    while pos != -1:
        offsets.append(pos)
        pos = raw.find(b"PK\x01\x02", pos + 4)
    first_offset = struct.unpack_from("<I", raw, offsets[0] + 42)[0]
    struct.pack_into("<I", raw, offsets[1] + 42, first_offset)
    path.write_bytes(bytes(raw))
    assert _code(path) == Code.PACKAGE_ZIP_BOMB


def test_encrypted_entries_are_unsupported(tmp_path: Path) -> None:
    path = write_package_zip(tmp_path / "e.zip", hello_files())
    raw = bytearray(path.read_bytes())
    pos = raw.find(b"PK\x01\x02")
    struct.pack_into("<H", raw, pos + 8, struct.unpack_from("<H", raw, pos + 8)[0] | 0x1)
    path.write_bytes(bytes(raw))
    assert _code(path) == Code.PACKAGE_UNSUPPORTED_ZIP


def test_no_config_at_root_hints_at_the_folder(tmp_path: Path) -> None:
    files = {f"hello/{k}": v for k, v in hello_files().items()}
    path = write_package_zip(tmp_path / "f.zip", files)
    with pytest.raises(PackageInvalidError) as info:
        inspect_package(path, LIMITS)
    assert info.value.code == Code.PACKAGE_NO_CONFIG and "hello/jid.yaml" in info.value.message


def test_empty_zip_has_no_config(tmp_path: Path) -> None:
    path = write_package_zip(tmp_path / "empty.zip", {})
    assert _code(path) == Code.PACKAGE_NO_CONFIG


def test_extract_keeps_exec_bits_and_checks_the_id(tmp_path: Path) -> None:
    files = {**hello_files(), "bin/run.sh": "#!/bin/sh\necho hi\n", "lib/util.py": "X = 1\n"}
    path = write_package_zip(tmp_path / "x.zip", files, executable=["bin/run.sh"], folders=True)
    pkg = inspect_package(path, LIMITS)
    dest = tmp_path / "out"
    old_umask = os.umask(0o077)
    try:
        extract_package(path, dest, expected_id=pkg.id)
    finally:
        os.umask(old_umask)
    assert (dest / "bin/run.sh").stat().st_mode & 0o777 == 0o755
    assert (dest / "lib/util.py").stat().st_mode & 0o777 == 0o644
    assert (dest / "model.py").read_text() == files["model.py"]
    with pytest.raises(PackageInvalidError) as info:
        extract_package(path, tmp_path / "again", expected_id="0" * 64)
    assert info.value.code == Code.PACKAGE_ID_MISMATCH


def test_extract_refuses_unsafe_zips_and_writes_nothing_outside(tmp_path: Path) -> None:
    path = write_package_zip(tmp_path / "u.zip", hello_files(), entries=[("../escaped.txt", "x")])
    with pytest.raises(PackageInvalidError):
        extract_package(path, tmp_path / "out")
    assert not (tmp_path / "escaped.txt").exists()
    assert list((tmp_path / "out").iterdir()) == []


def test_every_validation_code_is_an_invalid_error_with_a_4xx() -> None:
    assert len(PACKAGE_HTTP_STATUS) >= 24
    for code, status in PACKAGE_HTTP_STATUS.items():
        assert status in (400, 413, 415, 422)
        assert type(error_for(code, "x")) is InvalidError


def test_a_large_stored_file_is_not_a_bomb(tmp_path: Path) -> None:
    files = {**hello_files(), "weights.bin": bytes(3 * 1024 * 1024)}
    path = write_package_zip(tmp_path / "w.zip", files, compression=zipfile.ZIP_STORED)
    limits = PackageLimits(max_upload_bytes=10**9, max_uncompressed_bytes=10**9, max_entries=100, max_ratio=10)
    pkg = inspect_package(path, limits)
    assert {f.path: f.size for f in pkg.files}["weights.bin"] == 3 * 1024 * 1024
