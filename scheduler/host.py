"""The machine's capacity (memory, Docker's disk) and premd's host stats. Blocking reads: run in a thread."""

from __future__ import annotations

import os
import time

from common.messages import GpuInfo, HostFacts, OSStats

GIB = 1024**3


def _meminfo() -> tuple[int, int]:
    """(total, available) bytes from /proc/meminfo; available is what can be used without swapping."""
    values: dict[str, int] = {}
    with open("/proc/meminfo", encoding="ascii") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("MemTotal", "MemAvailable"):
                values[key] = int(rest.split()[0]) * 1024
    return values["MemTotal"], values.get("MemAvailable", 0)


def _disk(path: str) -> tuple[int, int]:
    """(free, total) bytes of the filesystem holding ``path`` (the nearest existing parent)."""
    while not os.path.exists(path) and path not in ("", "/"):
        path = os.path.dirname(path)
    st = os.statvfs(path or "/")
    return st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize


def read_host_facts(gpus: list[GpuInfo], docker_root: str, docker_available: bool) -> HostFacts:
    total, available = _meminfo()
    free_disk, total_disk = _disk(docker_root)
    return HostFacts(
        gpus=gpus,
        memory_total_bytes=total,
        memory_available_bytes=available,
        disk_free_bytes=free_disk,
        disk_total_bytes=total_disk,
        docker_available=docker_available,
        updated_at=time.time(),
    )


def os_stats(cpu_percent: float, docker_root: str) -> OSStats:
    """premd's OSStats (GiB, percent). Disk is Docker's, where model images live (premd looked at its own /)."""
    total, available = _meminfo()
    used = total - available
    free_disk, total_disk = _disk(docker_root)
    used_disk = total_disk - free_disk
    return OSStats(
        cpu_percentage=round(cpu_percent, 2),
        memory_usage=round(used / GIB, 2),
        memory_limit=round(total / GIB, 2),
        memory_percentage=round(used / total * 100, 2) if total else 0.0,
        storage_usage=round(used_disk / GIB, 2),
        storage_limit=round(total_disk / GIB, 2),
        storage_percentage=round(used_disk / total_disk * 100, 2) if total_disk else 0.0,
    )


class CpuSampler:
    """Host CPU use between two samples of /proc/stat: no 1 s blocking sample per request (premd's cost)."""

    def __init__(self) -> None:
        self._last = self._read()

    @staticmethod
    def _read() -> tuple[int, int]:
        with open("/proc/stat", encoding="ascii") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return sum(fields), idle

    def sample(self) -> float:
        """Percent busy since the previous sample (or since the sampler was made)."""
        total, idle = self._read()
        last_total, last_idle = self._last
        self._last = (total, idle)
        delta = total - last_total
        return 0.0 if delta <= 0 else (1 - (idle - last_idle) / delta) * 100
