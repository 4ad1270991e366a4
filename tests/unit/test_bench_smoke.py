"""``python -m bench`` runs end to end in its quick mode (one small suite) and writes its report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_command_quick_packages_suite(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--only", "packages", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "[bench 1/1" in done.stderr  # the progress display
    document = json.loads((tmp_path / "report.json").read_text())
    assert document["quick"] is True and not document["notes"]
    keys = {row["key"] for row in document["figures"]}
    assert "packages.hello (2 files).inspect (validate + hash + config)" in keys
    assert (tmp_path / "report.md").read_text().startswith("# premd benchmark report")


def test_bench_command_refuses_an_unknown_suite(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--only", "nope", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2 and "unknown suite(s): nope" in done.stderr


def test_bench_command_quick_bus_suite(tmp_path: Path) -> None:
    """The bus suite (an embedded nats-server, a responder process, the gateway under SSE clients) runs."""
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--only", "bus", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    document = json.loads((tmp_path / "report.json").read_text())
    assert not document["notes"], document["notes"]
    keys = {row["key"] for row in document["figures"]}
    assert {"bus.bare", "bus.premd", "sse.rss.idle", "sse.rss.batch2"} <= keys
    assert any("SSE clients: gateway memory bounded" in goal["goal"] for goal in document["goals"])
