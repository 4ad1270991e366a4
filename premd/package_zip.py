"""Zip a package folder the same way every time: sorted entries, one fixed timestamp, exec bits kept.

The package ID (docs/packages.md) covers paths, sizes, contents and exec bits only, so any zip of the same files
has the same ID; a deterministic zip also makes the bytes stored for the first upload reproducible. Left out,
because the builder refuses them or they are not part of the model: OS metadata (``__MACOSX/``, ``.DS_Store``,
``Thumbs.db``, ``desktop.ini``), ``.git/``, ``__pycache__/`` and ``*.pyc``.
"""

from __future__ import annotations

import os
import stat
import unicodedata
import zipfile
from pathlib import Path

FIXED_TIME = (1980, 1, 1, 0, 0, 0)
"""The earliest time a zip can hold: nothing of the machine's clock or the files' times gets in."""
SKIPPED_DIRS = frozenset({"__MACOSX", ".git", "__pycache__"})
SKIPPED_FILES = frozenset({".DS_Store", "Thumbs.db", "desktop.ini"})


class PackageFolderError(ValueError):
    """The folder cannot be a package (a link, a special file, no jid.yaml)."""


def package_files(root: Path) -> list[tuple[str, Path]]:
    """(zip path, file) for every file to pack, sorted by the UTF-8 bytes of the zip path."""
    found: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        for name in list(dirnames):
            if name in SKIPPED_DIRS:
                dirnames.remove(name)
            elif (here / name).is_symlink():
                raise PackageFolderError(f"{here / name} is a symbolic link; a package holds regular files only")
        for name in filenames:
            path = here / name
            if name in SKIPPED_FILES or name.endswith(".pyc"):
                continue
            mode = path.lstat().st_mode
            if stat.S_ISLNK(mode):
                raise PackageFolderError(f"{path} is a symbolic link; a package holds regular files only")
            if not stat.S_ISREG(mode):
                raise PackageFolderError(f"{path} is not a regular file; a package holds regular files only")
            arcname = unicodedata.normalize("NFC", path.relative_to(root).as_posix())
            found.append((arcname, path))
    found.sort(key=lambda item: item[0].encode())
    if "jid.yaml" not in {arc for arc, _ in found}:
        raise PackageFolderError(f"{root} has no jid.yaml at its top: is it the package's folder?")
    return found


def zip_folder(root: Path, dest: Path) -> Path:
    """Write ``root``'s package files to the zip ``dest`` (deflated); the same folder gives the same bytes."""
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as out:
        for arcname, path in package_files(root):
            info = zipfile.ZipInfo(arcname, date_time=FIXED_TIME)
            executable = path.stat().st_mode & 0o111
            info.external_attr = ((0o100755 if executable else 0o100644) & 0xFFFF) << 16
            info.create_system = 3  # Unix: the mode above is read
            info.compress_type = zipfile.ZIP_DEFLATED
            out.writestr(info, path.read_bytes(), compresslevel=9)
    return dest
