"""What every bench suite shares: figures and their statistics, the machine, progress, helpers for processes.

A :class:`Figure` is one measured quantity: its samples grouped by repetition. Its summary is the median
and p99 over all samples, the spread of the per-repetition medians, and the ratio of its median to its
baseline's (another figure measured side by side in the same run).
"""

from __future__ import annotations

import asyncio
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from tests.testbed.util import free_port as free_port  # re-exported: the suites' one free_port
from tests.testbed.util import wait_http_ok

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
DEADLINE_S = 30.0


# ---------------------------------------------------------------- statistics (pure: unit-tested)


def percentile(samples: list[float], q: float) -> float:
    """The nearest-rank percentile (``q`` in 0..1) of ``samples``."""
    if not samples:
        raise ValueError("no samples")
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, int(q * len(ordered) + 0.5) - 1))]


@dataclass
class Figure:
    """One quantity; ``runs`` holds its samples per repetition (seconds, bytes or a count per ``unit``)."""

    key: str
    title: str
    unit: str = "ms"
    runs: list[list[float]] = field(default_factory=list)
    baseline: str | None = None
    goal: str = ""
    higher_is_better: bool = False

    def add_run(self, samples: list[float]) -> None:
        if samples:
            self.runs.append(list(samples))

    @property
    def samples(self) -> list[float]:
        return [s for run in self.runs for s in run]

    def summary(self) -> dict[str, float]:
        samples = self.samples
        medians = [statistics.median(run) for run in self.runs]
        return {
            "n": float(len(samples)),
            "median": statistics.median(samples),
            "p99": percentile(samples, 0.99),
            "spread_low": min(medians),
            "spread_high": max(medians),
        }


def ratio(figure: Figure, baseline: Figure) -> float:
    """Median of ``figure`` over the median of ``baseline``."""
    base = statistics.median(baseline.samples)
    return statistics.median(figure.samples) / base if base else float("inf")


def added(via: Figure, direct: Figure, q: float = 0.5) -> list[float]:
    """Per repetition: the ``q`` quantile of ``via`` minus that of ``direct`` (what a hop adds)."""
    return [percentile(a, q) - percentile(b, q) for a, b in zip(via.runs, direct.runs, strict=False)]


# ---------------------------------------------------------------- the machine


def machine() -> dict[str, str]:
    cpu = platform.processor() or "?"
    mem = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return {
        "cpu": f"{cpu} ({os.cpu_count()} logical CPUs)",
        "memory": mem,
        "os": platform.platform(),
        "python": platform.python_version(),
        "aiohttp": aiohttp.__version__,
        "load average at start": load,
    }


# ---------------------------------------------------------------- progress


class Progress:
    """One line per step on stderr: ``[bench 3/9 00:42] proxy: latency``."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.done = 0
        self.start = time.monotonic()

    def step(self, text: str) -> None:
        self.done += 1
        self.say(text, count=True)

    def say(self, text: str, count: bool = False) -> None:
        elapsed = int(time.monotonic() - self.start)
        where = f"{self.done}/{self.total} " if count else ""
        print(f"[bench {where}{elapsed // 60:02d}:{elapsed % 60:02d}] {text}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- processes and ports


async def wait_ok(url: str, deadline_s: float = DEADLINE_S) -> None:
    """Until ``url`` answers 200 (a process the bench started is ready)."""
    await wait_http_ok(url, deadline_s=deadline_s, interval=0.05)


async def spawn(*args: str, env: dict[str, str] | None = None) -> asyncio.subprocess.Process:
    """A Python child (``python -m bench.<module> ...``) in the repository, its output discarded."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        *args,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )


async def stop_all(children: list[asyncio.subprocess.Process]) -> None:
    for child in children:
        if child.returncode is None:
            child.terminate()
    for child in children:
        await child.wait()
