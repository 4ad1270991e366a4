"""NVIDIA GPUs through NVML (nvidia-ml-py). No driver, no GPU, or no library: an empty inventory, never an error."""

from __future__ import annotations

import logging
import threading

from common.messages import GpuInfo, GPUStats, SingleGPU

logger = logging.getLogger(__name__)

MIB = 1024 * 1024


class GpuProbe:
    """Lists GPUs with their memory now. Blocking (NVML calls): run it in a thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ready: bool | None = None

    def _init(self) -> bool:
        if self._ready is None:
            try:
                import pynvml

                pynvml.nvmlInit()
                self._ready = True
            except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ... : all mean "no GPU"
                logger.info("no NVIDIA GPU available (%s): CPU images only", exc)
                self._ready = False
        return self._ready

    def list(self) -> list[GpuInfo]:
        with self._lock:
            if not self._init():
                return []
            import pynvml

            try:
                return [_read(pynvml, i) for i in range(pynvml.nvmlDeviceGetCount())]
            except pynvml.NVMLError as exc:
                logger.warning("NVML query failed: %s", exc)
                return []


def _read(pynvml: object, index: int) -> GpuInfo:
    nv = pynvml
    handle = nv.nvmlDeviceGetHandleByIndex(index)  # type: ignore[attr-defined]
    memory = nv.nvmlDeviceGetMemoryInfo(handle)  # type: ignore[attr-defined]
    uuid = nv.nvmlDeviceGetUUID(handle)  # type: ignore[attr-defined]
    name = nv.nvmlDeviceGetName(handle)  # type: ignore[attr-defined]
    try:
        utilization: float | None = float(nv.nvmlDeviceGetUtilizationRates(handle).gpu)  # type: ignore[attr-defined]
    except Exception:  # not supported on some boards (MIG slices, some laptops)
        utilization = None
    return GpuInfo(
        index=index,
        uuid=uuid.decode() if isinstance(uuid, bytes) else str(uuid),
        name=name.decode() if isinstance(name, bytes) else str(name),
        memory_total_mib=int(memory.total) // MIB,
        memory_free_mib=int(memory.free) // MIB,
        memory_used_mib=int(memory.used) // MIB,
        utilization_pct=utilization,
    )


def gpu_stats(gpus: list[GpuInfo]) -> GPUStats:
    """premd's GPUStats: memory in GiB, utilised memory and load as fractions; all null without a GPU."""
    if not gpus:
        return GPUStats()
    singles = [
        SingleGPU(
            gpu_name=g.name,
            total_memory=round(g.memory_total_mib / 1024, 2),
            used_memory=round(g.memory_used_mib / 1024, 2),
            free_memory=round(g.memory_free_mib / 1024, 2),
            utilised_memory=round(g.memory_used_mib / g.memory_total_mib, 2) if g.memory_total_mib else 0.0,
            load=round((g.utilization_pct or 0.0) / 100, 2),
        )
        for g in gpus
    ]
    return GPUStats(
        total_memory=round(sum(s.total_memory for s in singles), 2),
        used_memory=round(sum(s.used_memory for s in singles), 2),
        free_memory=round(sum(s.free_memory for s in singles), 2),
        average_utilised_memory=round(sum(s.utilised_memory for s in singles) / len(singles), 2),
        average_load=round(sum(s.load for s in singles) / len(singles), 2),
        gpus=singles,
    )
