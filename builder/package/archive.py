"""Reading a package zip safely: every entry is checked before anything is read, limits are enforced on the
bytes actually decompressed (headers may lie), and nothing outside the package is ever written.
"""

from __future__ import annotations

import hashlib
import itertools
import lzma
import os
import re
import stat
import unicodedata
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

import msgspec

from builder.package.errors import PackageInvalidError
from builder.package.limits import RATIO_FLOOR_BYTES, PackageLimits
from builder.package.manifest import PackageFile, package_id
from common.errors import Code

_CHUNK = 256 * 1024
_LOCAL_HEADER_BYTES = 30
_SUPPORTED_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA)
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_DRIVE = re.compile(r"^[A-Za-z]:")
# Archivers' side files: they would change the package ID while meaning nothing to the model.
_OS_METADATA_DIRS = ("__MACOSX",)
_OS_METADATA_FILES = (".DS_Store", "Thumbs.db", "desktop.ini")


class Entry(msgspec.Struct, frozen=True, kw_only=True):
    """A zip entry that passed the checks; ``path`` is NFC-normalised, without a trailing slash."""

    path: str
    info: zipfile.ZipInfo
    is_dir: bool
    executable: bool


def _fail(code: Code, message: str) -> PackageInvalidError:
    return PackageInvalidError(code, message)


def _check_name(info: zipfile.ZipInfo) -> str:
    raw = info.orig_filename
    shown = repr(raw)
    if _CONTROL.search(raw):
        raise _fail(Code.PACKAGE_UNSAFE_PATH, f"entry {shown} has a control character in its name")
    if "\\" in raw:
        raise _fail(Code.PACKAGE_UNSAFE_PATH, f"entry {shown} uses '\\' in its path; zip paths use '/'")
    if raw.startswith("/") or _DRIVE.match(raw):
        raise _fail(Code.PACKAGE_UNSAFE_PATH, f"entry {shown} has an absolute path")
    name = raw[:-1] if raw.endswith("/") else raw
    parts = name.split("/")
    if ".." in parts:
        raise _fail(Code.PACKAGE_UNSAFE_PATH, f"entry {shown} climbs out of the package with '..'")
    if any(part in ("", ".") for part in parts):
        raise _fail(Code.PACKAGE_UNSAFE_PATH, f"entry {shown} has an empty or '.' path segment")
    if parts[0] in _OS_METADATA_DIRS or parts[-1] in _OS_METADATA_FILES:
        raise _fail(
            Code.PACKAGE_OS_METADATA,
            f"entry {shown} is archiver/OS metadata, not package content; zip without it"
            " (e.g. `zip -r pkg.zip . -x '__MACOSX/*' '*.DS_Store'`)",
        )
    # macOS writes decomposed (NFD) names: the same files must give the same ID wherever they were zipped.
    return unicodedata.normalize("NFC", name)


def _check_kind(info: zipfile.ZipInfo, path: str) -> tuple[bool, bool]:
    """(is_dir, executable) of an entry; rejects links and special files."""
    is_dir = info.is_dir()
    mode = info.external_attr >> 16 if info.create_system == 3 else 0
    kind = stat.S_IFMT(mode)
    if kind == stat.S_IFLNK:
        raise _fail(Code.PACKAGE_SYMLINK, f"entry {path!r} is a symbolic link; packages hold regular files only")
    if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
        raise _fail(Code.PACKAGE_SYMLINK, f"entry {path!r} is a special file (mode {oct(mode)}), not a regular file")
    if kind == stat.S_IFDIR:
        is_dir = True
    return is_dir, bool(mode & 0o111) and not is_dir


def _check_method(info: zipfile.ZipInfo, path: str) -> None:
    if info.flag_bits & 0x1:
        raise _fail(Code.PACKAGE_UNSUPPORTED_ZIP, f"entry {path!r} is encrypted; upload an unencrypted zip")
    if info.compress_type not in _SUPPORTED_METHODS:
        raise _fail(
            Code.PACKAGE_UNSUPPORTED_ZIP,
            f"entry {path!r} uses compression method {info.compress_type}; use deflate (or store, bzip2, lzma)",
        )


def _raw_name_length(info: zipfile.ZipInfo) -> int:
    encoding = "utf-8" if info.flag_bits & 0x800 else "cp437"
    try:
        return len(info.orig_filename.encode(encoding))
    except UnicodeEncodeError:
        return len(info.orig_filename.encode("utf-8"))


def _check_no_overlap(zf: zipfile.ZipFile, entries: list[Entry]) -> None:
    """Entries sharing compressed bytes are the classic non-recursive zip bomb: reject them from the offsets."""
    spans = sorted(
        (e.info.header_offset, e.info.header_offset + _LOCAL_HEADER_BYTES + _raw_name_length(e.info), e)
        for e in entries
        if not e.is_dir or e.info.compress_size
    )
    for (_, data_start, cur), (next_offset, _, nxt) in itertools.pairwise(spans):
        if next_offset < data_start + cur.info.compress_size:
            raise _fail(
                Code.PACKAGE_ZIP_BOMB,
                f"entries {cur.path!r} and {nxt.path!r} overlap in the archive (an overlapping-entry zip bomb)",
            )
    if spans:
        _, data_start, last = spans[-1]
        if data_start + last.info.compress_size > zf.start_dir:
            raise _fail(Code.PACKAGE_CORRUPT, f"entry {last.path!r} runs into the zip's central directory")


def _check_tree(entries: list[Entry]) -> None:
    seen: dict[str, str] = {}
    files: set[str] = set()
    dirs: set[str] = set()
    for entry in entries:
        if entry.is_dir:
            dirs.add(entry.path)
        else:
            files.add(entry.path)
            parts = entry.path.split("/")
            dirs.update("/".join(parts[:i]) for i in range(1, len(parts)))
        folded = entry.path.casefold() + ("/" if entry.is_dir else "")
        other = seen.get(folded)
        if other is not None:
            if other == entry.path:
                raise _fail(Code.PACKAGE_DUPLICATE_ENTRY, f"entry {entry.path!r} appears twice in the zip")
            raise _fail(
                Code.PACKAGE_DUPLICATE_ENTRY,
                f"entries {other!r} and {entry.path!r} differ only in letter case (they collide on many file systems)",
            )
        seen[folded] = entry.path
    clash = sorted(files & dirs)
    if clash:
        raise _fail(Code.PACKAGE_DUPLICATE_ENTRY, f"{clash[0]!r} is both a file and a folder in the zip")


def _ratio_message(entry: Entry, limits: PackageLimits) -> str:
    return (
        f"entry {entry.path!r} decompresses to more than {limits.max_ratio} times its compressed size"
        f" ({entry.info.compress_size} bytes), like a zip bomb; store such a file uncompressed (zip -0) or raise"
        " PREMD_PACKAGE_MAX_RATIO"
    )


def _read_error(path: str, exc: BaseException) -> PackageInvalidError:
    if isinstance(exc, EOFError):
        return _fail(Code.PACKAGE_TRUNCATED, f"entry {path!r} ends early: the zip is truncated ({exc})")
    return _fail(Code.PACKAGE_CORRUPT, f"entry {path!r} cannot be decompressed: {exc}")


class PackageZip:
    """An open package zip whose entries passed every structural check (use as a context manager)."""

    def __init__(self, zip_path: Path, limits: PackageLimits) -> None:
        self.limits = limits
        size = zip_path.stat().st_size
        if size > limits.max_upload_bytes:
            raise _fail(Code.PACKAGE_TOO_LARGE, f"the zip is {size} bytes; the limit is {limits.max_upload_bytes}")
        with zip_path.open("rb") as fh:
            head = fh.read(4)
        try:
            self._zf = zipfile.ZipFile(zip_path)
        except zipfile.BadZipFile as exc:
            if head in _ZIP_MAGICS:
                raise _fail(
                    Code.PACKAGE_TRUNCATED,
                    f"the zip is truncated or damaged: its central directory cannot be read ({exc})",
                ) from None
            raise _fail(Code.PACKAGE_NOT_ZIP, "the upload is not a zip file") from None
        except (OSError, EOFError, ValueError) as exc:
            raise _fail(Code.PACKAGE_TRUNCATED, f"the zip is truncated or damaged: {exc}") from None
        try:
            self.entries = self._check_entries()
        except BaseException:
            self._zf.close()
            raise
        self.by_path = {e.path: e for e in self.entries if not e.is_dir}

    def _check_entries(self) -> list[Entry]:
        infos = self._zf.infolist()
        if len(infos) > self.limits.max_entries:
            raise _fail(
                Code.PACKAGE_TOO_MANY_ENTRIES,
                f"the zip has {len(infos)} entries; the limit is {self.limits.max_entries}",
            )
        entries = []
        for info in infos:
            path = _check_name(info)
            _check_method(info, path)
            is_dir, executable = _check_kind(info, path)
            entries.append(Entry(path=path, info=info, is_dir=is_dir, executable=executable))
        _check_tree(entries)
        _check_no_overlap(self._zf, entries)
        # Headers first, for a quick answer; read_all counts the bytes actually decompressed as well.
        declared = sum(e.info.file_size for e in entries)
        if declared > self.limits.max_uncompressed_bytes:
            raise _fail(
                Code.PACKAGE_TOO_LARGE,
                f"the files decompress to {declared} bytes; the limit is {self.limits.max_uncompressed_bytes}",
            )
        for e in entries:
            if e.info.file_size > max(RATIO_FLOOR_BYTES, self.limits.max_ratio * max(e.info.compress_size, 1)):
                raise _fail(Code.PACKAGE_ZIP_BOMB, _ratio_message(e, self.limits))
        return entries

    def __enter__(self) -> PackageZip:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._zf.close()

    def read_all(self, open_output: Callable[[Entry], BinaryIO] | None = None) -> list[PackageFile]:
        """Decompress every file (hashing it, and writing it where *open_output* says), enforcing the limits."""
        total = 0
        files = []
        for entry in self.entries:
            if entry.is_dir:
                continue
            digest = hashlib.sha256()
            size = 0
            out = open_output(entry) if open_output is not None else None
            try:
                with self._zf.open(entry.info) as src:
                    while True:
                        try:
                            chunk = src.read(_CHUNK)
                        except (zipfile.BadZipFile, EOFError, zlib.error, lzma.LZMAError, OSError) as exc:
                            raise _read_error(entry.path, exc) from None
                        if not chunk:
                            break
                        size += len(chunk)
                        total += len(chunk)
                        if total > self.limits.max_uncompressed_bytes:
                            raise _fail(
                                Code.PACKAGE_TOO_LARGE,
                                f"the files decompress to more than {self.limits.max_uncompressed_bytes} bytes"
                                f" (reached while reading {entry.path!r})",
                            )
                        if size > RATIO_FLOOR_BYTES and size > self.limits.max_ratio * max(entry.info.compress_size, 1):
                            raise _fail(Code.PACKAGE_ZIP_BOMB, _ratio_message(entry, self.limits))
                        digest.update(chunk)
                        if out is not None:
                            out.write(chunk)
            except (zipfile.BadZipFile, NotImplementedError, RuntimeError) as exc:
                raise _read_error(entry.path, exc) from None
            finally:
                if out is not None:
                    out.close()
            files.append(
                PackageFile(path=entry.path, size=size, sha256=digest.hexdigest(), executable=entry.executable)
            )
        return files

    def read_text(self, path: str, max_bytes: int) -> str:
        """A small file already verified by ``read_all``, as UTF-8 text."""
        entry = self.by_path[path]
        with self._zf.open(entry.info) as src:
            data = src.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise _fail(Code.PACKAGE_CONFIG_INVALID, f"{path} is larger than {max_bytes} bytes")
        try:
            return data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise _fail(Code.PACKAGE_CONFIG_INVALID, f"{path} is not UTF-8 text (byte {exc.start})") from None


def extract_package(
    zip_path: Path, dest: Path, limits: PackageLimits | None = None, expected_id: str | None = None
) -> None:
    """Unpack a package into *dest* (created, must be empty) with every check ``inspect_package`` makes.

    Files keep their exec bit (0755, else 0644). With *expected_id*, the unpacked content must have that ID.
    """
    limits = limits if limits is not None else PackageLimits.from_settings()
    dest.mkdir(parents=True, exist_ok=True)
    if any(dest.iterdir()):
        raise ValueError(f"{dest} is not empty")
    root = dest.resolve()

    def open_output(entry: Entry) -> BinaryIO:
        target = root.joinpath(*entry.path.split("/"))
        target.parent.mkdir(parents=True, exist_ok=True)
        # "x": a file is created once, never overwritten (names were checked unique, this makes it certain).
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o755 if entry.executable else 0o644)
        os.fchmod(fd, 0o755 if entry.executable else 0o644)  # the umask must not drop the exec bit
        return os.fdopen(fd, "wb")

    with PackageZip(zip_path, limits) as pz:
        for entry in pz.entries:
            if entry.is_dir:
                root.joinpath(*entry.path.split("/")).mkdir(parents=True, exist_ok=True)
        files = pz.read_all(open_output)
    if expected_id is not None and package_id(files) != expected_id:
        raise _fail(Code.PACKAGE_ID_MISMATCH, f"the zip's content has ID {package_id(files)}, not {expected_id}")
