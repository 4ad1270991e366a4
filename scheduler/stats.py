"""premd's ContainerStats from one Docker stats document (with precpu), computed like `docker stats`."""

from __future__ import annotations

from typing import Any

from common.messages import ContainerStats

GIB = 1024**3


def _get(doc: dict[str, Any], *path: str) -> int:
    value: Any = doc
    for key in path:
        if not isinstance(value, dict):
            return 0
        value = value.get(key)
    return int(value) if isinstance(value, int | float) else 0


def container_stats(service_id: str, raw: dict[str, Any], image_size: int, disk_total: int) -> ContainerStats:
    cpu_delta = _get(raw, "cpu_stats", "cpu_usage", "total_usage") - _get(
        raw, "precpu_stats", "cpu_usage", "total_usage"
    )
    system_delta = _get(raw, "cpu_stats", "system_cpu_usage") - _get(raw, "precpu_stats", "system_cpu_usage")
    percpu = raw.get("cpu_stats", {}).get("cpu_usage", {}).get("percpu_usage") or []
    online = _get(raw, "cpu_stats", "online_cpus") or len(percpu) or 1
    cpu = cpu_delta / system_delta * online * 100 if system_delta > 0 and cpu_delta > 0 else 0.0
    # Like the docker CLI: page cache the kernel can drop is not the service's memory.
    inactive = _get(raw, "memory_stats", "stats", "inactive_file") or _get(
        raw, "memory_stats", "stats", "total_inactive_file"
    )
    usage = max(_get(raw, "memory_stats", "usage") - inactive, 0)
    limit = _get(raw, "memory_stats", "limit")
    return ContainerStats(
        id=service_id,
        cpu_percentage=round(cpu, 2),
        memory_usage=round(usage / GIB, 2),
        memory_limit=round(limit / GIB, 2),
        memory_percentage=round(usage / limit * 100, 2) if limit else 0.0,
        storage_percentage=round(image_size / disk_total * 100, 2) if disk_total else 0.0,
        storage_usage=round(image_size / GIB, 2),
        storage_limit=round(disk_total / GIB, 2),
    )
