"""The bench's pure parts: statistics of figures and the report (Markdown, JSON, plots) they make."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.core import Figure, added, percentile, ratio
from bench.report import goals, load_samples, save_samples, write


def test_percentile_is_nearest_rank() -> None:
    samples = [float(i) for i in range(1, 101)]
    assert percentile(samples, 0.5) == 50.0
    assert percentile(samples, 0.99) == 99.0
    assert percentile(samples, 1.0) == 100.0
    assert percentile([3.0], 0.99) == 3.0
    with pytest.raises(ValueError):
        percentile([], 0.5)


def test_figure_summary_spread_ratio_and_added() -> None:
    direct = Figure("proxy.get.direct", "direct")
    via = Figure("proxy.get.premd", "premd", baseline="proxy.get.direct")
    direct.add_run([1.0, 1.0, 1.0])
    direct.add_run([2.0, 2.0, 2.0])
    via.add_run([1.5, 1.5, 1.5])
    via.add_run([3.0, 3.0, 3.0])
    summary = via.summary()
    assert (summary["spread_low"], summary["spread_high"], summary["n"]) == (1.5, 3.0, 6.0)
    assert ratio(via, direct) == pytest.approx(2.25 / 1.5)
    assert added(via, direct) == [0.5, 1.0]


def _figures() -> dict[str, Figure]:
    figures: dict[str, Figure] = {}
    for kind in ("get", "embed"):
        for name, ms in (("direct", 0.2), ("premd", 0.35), ("before", 0.7), ("floor", 0.7)):
            fig = Figure(f"proxy.{kind}.{name}", f"{kind} {name}", baseline=None if name == "direct" else "x")
            fig.add_run([ms / 1000 + i * 1e-6 for i in range(100)])
            figures[fig.key] = fig
    for size, ms in ((1000, 2.0), (10_000, 40.0)):
        for case in ("steady", "facts"):
            fig = Figure(f"listing.{size}.{case}", f"list {size} {case}")
            fig.add_run([ms / 1000] * 10)
            figures[fig.key] = fig
    rps = {"direct": 1000.0, "premd": 800.0}
    for name, value in rps.items():
        figures[f"proxy.rps.{name}"] = Figure(f"proxy.rps.{name}", name, unit="req/s", runs=[[value]])
    return figures


def test_goals_say_met_or_not_from_the_figures() -> None:
    by_goal = {g["goal"]: g for g in goals(_figures())}
    assert by_goal["get premd: added <= 0.25 ms p50, <= 1 ms p99"]["met"] is True
    assert by_goal["proxy throughput >= 70% of direct at 16 connections"]["measured"] == "80%"
    listing = [g for g in by_goal.values() if g["goal"].startswith("GET /v1/services/")]
    assert [g["met"] for g in listing] == [True, False]


def test_report_files(tmp_path: Path) -> None:
    write(tmp_path, {"cpu": "test"}, _figures(), reps=1, quick=True, notes=["a note"])
    text = (tmp_path / "report.md").read_text()
    assert "## Goals (issue 13)" in text and "a note" in text
    document = json.loads((tmp_path / "report.json").read_text())
    assert document["machine"] == {"cpu": "test"}
    assert {row["key"] for row in document["figures"]} >= {"proxy.get.premd", "listing.1000.facts"}
    for name in ("proxy_latency.png", "listing.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_download_and_sse_memory_goals() -> None:
    figures = {
        "lifecycle.pull.plain": Figure("lifecycle.pull.plain", "docker pull", unit="s", runs=[[2.0, 2.0]]),
        "lifecycle.pull.premd": Figure(
            "lifecycle.pull.premd", "premd", unit="s", runs=[[2.2, 2.2]], baseline="lifecycle.pull.plain"
        ),
        "sse.rss.batch1": Figure("sse.rss.batch1", "gateway RSS, 200 SSE clients, after 500", unit="bytes"),
        "sse.rss.batch2": Figure("sse.rss.batch2", "gateway RSS, 200 SSE clients, after 1000", unit="bytes"),
    }
    figures["sse.rss.batch1"].add_run([60e6])
    figures["sse.rss.batch2"].add_run([60.5e6])
    by_goal = {g["goal"]: g for g in goals(figures)}
    pull = by_goal["image download within 5% of docker pull (median ratio)"]
    assert pull["met"] is False and pull["measured"] == "1.10x docker pull"
    sse = by_goal["200 SSE clients: gateway memory bounded (the second batch of events adds < 2 MB RSS)"]
    assert sse["met"] is True and sse["measured"] == "+0.5 MB"
    figures["sse.rss.batch2"].runs = [[70e6]]
    figures["lifecycle.pull.premd"].runs = [[2.05]]
    met = {g["goal"]: g["met"] for g in goals(figures)}
    assert met == {pull["goal"]: True, sse["goal"]: False}


def test_kept_samples_come_back_except_the_suites_run_again(tmp_path: Path) -> None:
    figures = _figures()
    figures["bus.bare"] = Figure("bus.bare", "bare", runs=[[0.001, 0.002]])
    suite_of = {key: ("other" if key.startswith("bus") else "gateway") for key in figures}
    save_samples(tmp_path, figures, suite_of, {"gateway": "2026-01-01 10:00 UTC", "other": "2026-01-01 11:00 UTC"})
    kept, kept_suites, when = load_samples(tmp_path, rerun=["other"])
    assert set(kept) == {key for key, suite in suite_of.items() if suite == "gateway"}
    assert set(kept_suites.values()) == {"gateway"} and when == {"gateway": "2026-01-01 10:00 UTC"}
    for key, fig in kept.items():
        original = figures[key]
        assert (fig.title, fig.unit, fig.runs, fig.baseline) == (
            original.title,
            original.unit,
            original.runs,
            original.baseline,
        )
    assert "bus.bare" not in kept and goals(kept) == goals(figures)
    assert load_samples(tmp_path / "none", rerun=[]) == ({}, {}, {})
