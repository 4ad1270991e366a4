"""premd's stats shapes from raw numbers: container stats like `docker stats`, GPU stats per premd."""

from __future__ import annotations

import pytest

from common.messages import GpuInfo
from scheduler.gpu import GpuProbe, gpu_stats
from scheduler.host import CpuSampler, os_stats, read_host_facts
from scheduler.stats import container_stats

GIB = 1024**3


def test_container_stats_like_docker_cli() -> None:
    raw = {
        "cpu_stats": {"cpu_usage": {"total_usage": 3_000_000}, "system_cpu_usage": 20_000_000, "online_cpus": 2},
        "precpu_stats": {"cpu_usage": {"total_usage": 1_000_000}, "system_cpu_usage": 10_000_000},
        "memory_stats": {"usage": 3 * GIB, "limit": 8 * GIB, "stats": {"inactive_file": 1 * GIB}},
    }
    stats = container_stats("svc", raw, image_size=2 * GIB, disk_total=100 * GIB)
    assert stats.cpu_percentage == 40.0  # 2e6 / 1e7 * 2 cpus * 100
    assert stats.memory_usage == 2.0  # cache the kernel can drop is not counted
    assert stats.memory_limit == 8.0
    assert stats.memory_percentage == 25.0
    assert (stats.storage_usage, stats.storage_limit, stats.storage_percentage) == (2.0, 100.0, 2.0)


def test_container_stats_first_sample_has_no_cpu_delta() -> None:
    stats = container_stats("svc", {"cpu_stats": {}, "precpu_stats": {}, "memory_stats": {}}, 0, 0)
    assert stats.cpu_percentage == 0.0 and stats.memory_percentage == 0.0 and stats.storage_percentage == 0.0


def test_gpu_stats_without_gpu_is_all_null() -> None:
    empty = gpu_stats([])
    assert empty.gpus is None and empty.total_memory is None and empty.average_load is None


def test_gpu_stats_sums_and_averages() -> None:
    gpus = [
        GpuInfo(
            index=0,
            uuid="GPU-a",
            name="A",
            memory_total_mib=8192,
            memory_free_mib=6144,
            memory_used_mib=2048,
            utilization_pct=50.0,
        ),
        GpuInfo(
            index=1,
            uuid="GPU-b",
            name="B",
            memory_total_mib=4096,
            memory_free_mib=1024,
            memory_used_mib=3072,
            utilization_pct=None,
        ),
    ]
    stats = gpu_stats(gpus)
    assert stats.total_memory == 12.0 and stats.free_memory == 7.0 and stats.used_memory == 5.0
    assert stats.gpus is not None and [g.utilised_memory for g in stats.gpus] == [0.25, 0.75]
    assert stats.average_utilised_memory == 0.5 and stats.average_load == 0.25


def test_probe_lists_this_hosts_gpus_without_raising() -> None:
    """On any host (with or without NVIDIA GPUs) the probe answers a list of well-formed entries."""
    gpus = GpuProbe().list()
    assert [g.index for g in gpus] == list(range(len(gpus)))
    assert all(g.memory_total_mib >= g.memory_free_mib >= 0 and g.uuid for g in gpus)


def test_probe_without_nvml_is_an_empty_inventory(monkeypatch: pytest.MonkeyPatch) -> None:
    """A host whose NVML cannot load (no driver, no library) gets an empty inventory, never an exception."""
    import pynvml

    def no_library() -> None:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)

    monkeypatch.setattr(pynvml, "nvmlInit", no_library)
    assert GpuProbe().list() == []


def test_host_facts_and_os_stats_read_this_machine(tmp_path: object) -> None:
    facts = read_host_facts([], "/var/lib/docker-does-not-exist/sub", docker_available=False)
    assert facts.memory_total_bytes > facts.memory_available_bytes > 0
    assert facts.disk_total_bytes > facts.disk_free_bytes > 0
    cpu = CpuSampler()
    stats = os_stats(cpu.sample(), "/")
    assert 0 < stats.memory_percentage < 100 and stats.memory_limit > 0
    assert 0 <= stats.cpu_percentage <= 100 and 0 < stats.storage_percentage < 100
