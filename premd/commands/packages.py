"""``premd package push | ls | show | pull | rm``: model packages, built into images by premd's builder.

``push`` takes a zip or a folder (zipped deterministically, premd/package_zip.py), uploads it, follows the
build log with its stages, and ends with the package ID and the image.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from premd.client import Api, CliError
from premd.commands.base import INTERRUPTED, add_client_options, client_parser
from premd.package_zip import PackageFolderError, zip_folder
from premd.ui import Ui, human_bytes

STAGES = ("building", "testing", "pushing", "ready")
UPLOAD_TIMEOUT_S = 900.0


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser("package", help="push, list, show, download or delete packages")
    add_client_options(parser)
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    push = client_parser(verbs, "push", "upload a package (a folder or a zip) and follow its build", push_package)
    push.add_argument("source", metavar="DIR_OR_ZIP")
    client_parser(verbs, "ls", "list packages", list_packages)
    client_parser(verbs, "show", "one package: status, stage, images", show_package).add_argument(
        "package_id", metavar="ID"
    )
    pull = client_parser(verbs, "pull", "download a package's zip", pull_package)
    pull.add_argument("package_id", metavar="ID")
    pull.add_argument("-o", "--output", type=Path, help="where to write it (default: <ID>.zip here)")
    client_parser(verbs, "rm", "delete a package", remove_package).add_argument("package_id", metavar="ID")


def _resolve(api: Api, given: str) -> str:
    """A full ID, or a unique prefix of one (as shown by `premd package ls`)."""
    if len(given) == 64:
        return given
    matches = [p["ID"] for p in api.get("/v1/packages/") if p["ID"].startswith(given.lower())]
    if len(matches) == 1:
        return str(matches[0])
    if not matches:
        raise CliError(f"no package {given} (see `premd package ls`)", "package.not_found")
    raise CliError(f"{given} names {len(matches)} packages; give more of the ID", "package.ambiguous")


def _images(record: dict[str, Any]) -> str:
    return ", ".join(a.get("Image") or a.get("URI") or "" for a in record.get("Artifacts") or []) or "-"


def push_package(args: argparse.Namespace, api: Api, ui: Ui) -> int:
    source = Path(args.source)
    with tempfile.TemporaryDirectory(prefix="premd-push-") as tmp:
        if source.is_dir():
            try:
                path = zip_folder(source, Path(tmp) / "package.zip")
            except PackageFolderError as exc:
                raise CliError(str(exc), "package.folder") from None
        elif source.is_file():
            path = source
        else:
            raise CliError(f"{source} is neither a folder nor a zip", "package.no_file")
        size = path.stat().st_size
        with path.open("rb") as body:
            files = {"file": (f"{source.name or 'package'}.zip", body, "application/zip")}
            record = api.call("POST", "/v1/packages/upload", files=files, timeout=UPLOAD_TIMEOUT_S)
    package_id = record["ID"]
    if not ui.json:
        ui.note(f"Uploaded {source} ({human_bytes(size)}): {package_id}")
    try:
        if record["Status"] not in ("ready", "failed"):
            _follow_build(api, ui, package_id)
    except KeyboardInterrupt:
        ui.note(f"Detached; the build goes on (`premd package show {package_id[:12]}`).")
        return INTERRUPTED
    final = api.get(f"/v1/packages/{package_id}")
    if ui.json:
        ui.emit(final)
    else:
        ui.fields(
            (("id", final["ID"]), ("name", final["Name"]), ("status", final["Status"]), ("image", _images(final)))
        )
    if final["Status"] != "ready":
        raise CliError(
            f"the build of {package_id[:12]} failed: {final.get('Error') or 'see its log'}", final.get("ErrorCode")
        )
    return 0


def _follow_build(api: Api, ui: Ui, package_id: str) -> None:
    events = api.sse(f"/v1/packages/{package_id}/logs", {"follow": "1"})
    progress = (
        Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total} stages"),
            TimeElapsedColumn(),
            console=ui.out,
        )
        if ui.tty
        else None
    )
    task = progress.add_task("queued", total=len(STAGES)) if progress is not None else None
    try:
        if progress is not None:
            progress.start()
        for sse in events:
            if sse.event == "end":
                break
            event = json.loads(sse.data) if sse.data else {}
            if ui.json:
                ui.emit(event)
                continue
            if sse.event == "log" and event.get("line") is not None:
                (progress.console if progress is not None else ui.out).print(
                    event["line"], markup=False, highlight=False
                )
            elif sse.event == "state":
                status = event.get("status") or event.get("stage")
                done = STAGES.index(status) + (1 if status == "ready" else 0) if status in STAGES else 0
                if progress is not None and task is not None:
                    progress.update(task, description=str(status), completed=done)
                else:
                    ui.line(f"[{done}/{len(STAGES)}] {status}")
    finally:
        if progress is not None:
            progress.stop()


def list_packages(args: argparse.Namespace, api: Api, ui: Ui) -> int:
    packages = api.get("/v1/packages/")
    if ui.json:
        ui.emit(packages)
        return 0
    ui.table(("ID", "NAME", "STATUS", "IMAGE"), ((p["ID"][:12], p["Name"], p["Status"], _images(p)) for p in packages))
    return 0


def show_package(args: argparse.Namespace, api: Api, ui: Ui) -> int:
    record = api.get(f"/v1/packages/{_resolve(api, args.package_id)}")
    if ui.json:
        ui.emit(record)
        return 0
    ui.fields(
        (
            ("id", record["ID"]),
            ("name", record["Name"]),
            ("status", record["Status"]),
            ("stage", record.get("Stage")),
            ("image", _images(record)),
            ("error", record.get("Error")),
            ("zip", human_bytes(record.get("ZipSize"))),
        )
    )
    return 0


def pull_package(args: argparse.Namespace, api: Api, ui: Ui) -> int:
    package_id = _resolve(api, args.package_id)
    dest: Path = args.output or Path(f"{package_id}.zip")
    size = api.download(f"/v1/packages/{package_id}.zip", dest)
    if ui.json:
        ui.emit({"id": package_id, "path": str(dest), "size": size})
    else:
        ui.line(f"Wrote {dest} ({human_bytes(size)}).")
    return 0


def remove_package(args: argparse.Namespace, api: Api, ui: Ui) -> int:
    package_id = _resolve(api, args.package_id)
    reply = api.call("DELETE", f"/v1/packages/{package_id}")
    if ui.json:
        ui.emit(reply if reply is not None else {"id": package_id})
    else:
        ui.line(f"Deleted package {package_id[:12]}.")
    return 0
