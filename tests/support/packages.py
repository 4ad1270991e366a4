"""Model packages for tests: write a package folder or zip from a dict of files, the hello package, jid.yaml.

The zip writer can also make the hostile zips the validation tests need (links, duplicate names, odd paths).
"""

from __future__ import annotations

import warnings
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

FileContent = str | bytes

HELLO_NAME = "premd-test/hello"
HELLO_MODEL = """\
class Model:
    def setup(self):
        self.greeting = "hello "

    def run(self, text=""):
        return self.greeting + text
"""

# One real pinned pure-Python PyPI dependency, absent from the test bed's base image: it can only come from the
# wheelhouse.
SIX_PIN = "six==1.16.0"
SIX_MODEL = """\
import six


class Model:
    def setup(self):
        self.greeting = "hello "

    def run(self, text=""):
        return self.greeting + text + " (six " + six.__version__ + ")"
"""
RAISING_MODEL = """\
class Model:
    def setup(self):
        pass

    def run(self, text=""):
        raise ValueError("run failed on purpose: " + text)
"""
# setup() never returns (until the container is removed): the test stage must give up at its setup timeout.
HANGING_SETUP_MODEL = """\
import time


class Model:
    def setup(self):
        while True:
            time.sleep(1)

    def run(self, text=""):
        return "never"
"""


def jid_yaml(
    name: str = HELLO_NAME,
    model: str = "model.py:Model",
    examples: list[dict[str, Any]] | None = None,
    **environment: Any,
) -> str:
    """A jid.yaml text; *environment* keys go under ``environment:`` (``architectures`` defaults to [cpu])."""
    doc: dict[str, Any] = {"name": name, "model": model}
    env = {"architectures": ["cpu"], **environment}
    doc["environment"] = {k: v for k, v in env.items() if v is not None}
    if examples is not None:
        doc["examples"] = examples
    return yaml.safe_dump(doc, sort_keys=False)


def hello_files(**environment: Any) -> dict[str, FileContent]:
    """The hello package: ``run(text)`` returns ``"hello " + text``; one example (world -> hello world)."""
    return {
        "jid.yaml": jid_yaml(examples=[{"input": {"text": "world"}, "output": "hello world"}], **environment),
        "model.py": HELLO_MODEL,
    }


def six_files() -> dict[str, FileContent]:
    """A package needing ``six==1.16.0``; ``run(text)`` returns ``"hello <text> (six 1.16.0)"``."""
    return {
        "jid.yaml": jid_yaml(
            name="premd-test/hello-six", python_packages=[SIX_PIN], examples=[{"input": {"text": "world"}}]
        ),
        "model.py": SIX_MODEL,
    }


def raising_files() -> dict[str, FileContent]:
    """A package whose ``run()`` raises ValueError (its setup succeeds)."""
    return {"jid.yaml": jid_yaml(name="premd-test/raising"), "model.py": RAISING_MODEL}


def hanging_setup_files() -> dict[str, FileContent]:
    """A package whose ``setup()`` never returns."""
    return {"jid.yaml": jid_yaml(name="premd-test/hanging"), "model.py": HANGING_SETUP_MODEL}


def write_package_dir(dest: Path, files: Mapping[str, FileContent], executable: Iterable[str] = ()) -> Path:
    """Write *files* (relative path -> content) under *dest*; paths in *executable* get mode 0755."""
    exec_paths = set(executable)
    for rel, content in files.items():
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content.encode() if isinstance(content, str) else content)
        target.chmod(0o755 if rel in exec_paths else 0o644)
    return dest


def write_package_zip(
    dest: Path,
    files: Mapping[str, FileContent],
    *,
    executable: Iterable[str] = (),
    symlinks: Mapping[str, str] | None = None,
    entries: Iterable[tuple[str, FileContent]] = (),
    compression: int = zipfile.ZIP_DEFLATED,
    order: Iterable[str] | None = None,
    date_time: tuple[int, int, int, int, int, int] = (2021, 3, 15, 12, 0, 0),
    folders: bool = False,
) -> Path:
    """Zip *files* into *dest* (in *order*, default sorted) and return *dest*.

    *symlinks* adds link entries (name -> target); *entries* adds raw (name, content) entries after the files,
    names unchecked (duplicates, '..', absolute paths); *folders* adds a directory entry per folder.
    """
    exec_paths = set(executable)
    names = list(order) if order is not None else sorted(files)
    with warnings.catch_warnings(), zipfile.ZipFile(dest, "w", compression=compression) as zf:
        warnings.simplefilter("ignore")  # zipfile warns on the duplicate names some tests need
        if folders:
            for folder in sorted({"/".join(n.split("/")[:i]) for n in names for i in range(1, n.count("/") + 1)}):
                info = zipfile.ZipInfo(folder + "/", date_time=date_time)
                info.create_system = 3
                info.external_attr = (0o40755 << 16) | 0x10
                zf.writestr(info, b"")
        for name in names:
            content = files[name]
            info = zipfile.ZipInfo(name, date_time=date_time)
            info.create_system = 3
            info.external_attr = (0o100755 if name in exec_paths else 0o100644) << 16
            info.compress_type = compression
            zf.writestr(info, content.encode() if isinstance(content, str) else content)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name, date_time=date_time)
            info.create_system = 3
            info.external_attr = 0o120777 << 16
            zf.writestr(info, target)
        for name, content in entries:
            info = zipfile.ZipInfo(name, date_time=date_time)
            info.compress_type = compression
            zf.writestr(info, content.encode() if isinstance(content, str) else content)
    return dest


def hello_zip(dest: Path, **environment: Any) -> Path:
    """The hello package as a zip at *dest*."""
    return write_package_zip(dest, hello_files(**environment))
