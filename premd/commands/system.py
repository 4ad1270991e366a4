"""``premd status`` (daemon, bus, Docker engine, components, GPUs) and ``premd stats`` (host, GPUs, services)."""

from __future__ import annotations

import argparse
from typing import Any

from premd.client import Api
from premd.commands.base import client_parser
from premd.ui import Ui


def register(sub: Any) -> None:
    client_parser(sub, "status", "is premd up: daemon, bus, Docker engine, components, GPUs", status)
    client_parser(sub, "stats", "resource use: host, GPUs, running services", stats)


def status(args: argparse.Namespace, api: Api, ui: Ui) -> int:
    system = api.get("/v1/system")
    ready = api.get("/readyz", ok=(200, 503))
    host = system.get("host") or {}
    docker = host.get("docker_available")
    if ui.json:
        ui.emit({"url": api.target.url, "version": system["version"], **ready, "docker": docker, "host": host})
        return 0 if ready["ready"] else 1
    ok, bad = ("ok", "green"), ("DOWN", "red")
    rows: list[tuple[str, str]] = [
        ("daemon", f"premd {system['version']} at {api.target.url}"),
        ("bus", str(ready["bus"])),
        ("docker engine", "unknown" if docker is None else "available" if docker else "not answering"),
    ]
    rows += [(f"  {name}", (ok if up else bad)[0]) for name, up in sorted(ready["components"].items())]
    gpus = host.get("gpus") or []
    rows.append(("gpus", ", ".join(f"{g['index']}: {g['name']} ({g['memory_total_mib']} MiB)" for g in gpus) or "none"))
    ui.fields(rows)
    ui.line("ready" if ready["ready"] else "not ready", style=(ok if ready["ready"] else bad)[1])
    return 0 if ready["ready"] else 1


def stats(args: argparse.Namespace, api: Api, ui: Ui) -> int:
    host = api.get("/v1/stats-all/")
    gpu = api.get("/v1/gpu-stats-all/")
    services = api.get("/v1/stats/")
    if ui.json:
        ui.emit({"host": host, "gpu": gpu, "services": services})
        return 0
    ui.fields(
        (
            ("cpu", f"{host['cpu_percentage']:.1f}%"),
            (
                "memory",
                f"{host['memory_usage']:.1f} / {host['memory_limit']:.1f} GiB ({host['memory_percentage']:.0f}%)",
            ),
            (
                "disk",
                f"{host['storage_usage']:.1f} / {host['storage_limit']:.1f} GiB ({host['storage_percentage']:.0f}%)",
            ),
            ("gpu", _gpu_line(gpu)),
        )
    )
    if services:
        ui.line("")
        ui.table(
            ("SERVICE", "CPU", "MEMORY", "STORAGE"),
            (
                (
                    s["id"],
                    f"{s['cpu_percentage']:.1f}%",
                    f"{s['memory_usage']:.2f} GiB ({s['memory_percentage']:.0f}%)",
                    f"{s['storage_usage']:.2f} GiB",
                )
                for s in services
            ),
        )
    return 0


def _gpu_line(gpu: dict[str, Any]) -> str:
    if not gpu.get("gpus"):
        return "none"
    used, total = gpu.get("used_memory"), gpu.get("total_memory")
    return f"{len(gpu['gpus'])} GPU(s), {used} / {total} memory, load {gpu.get('average_load')}"
