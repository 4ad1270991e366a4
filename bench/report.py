"""bench/results/report.md and report.json from the figures of one run, and the PNG plots."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from bench.core import Figure, added, percentile, ratio

MS_UNITS = frozenset({"ms"})
LABELS = {"direct": "direct", "premd": "premd", "before": "aiohttp route (before)", "floor": "bare aiohttp (floor)"}


def _num(value: float, unit: str) -> str:
    """A value as the report shows it (ms figures are already converted to ms)."""
    if unit in MS_UNITS or unit == "s":
        return f"{value:.3f}"
    return f"{value:,.0f}"


def rows(figures: dict[str, Figure]) -> list[dict[str, Any]]:
    """One JSON-ready row per figure: summary, baseline ratio, goal."""
    out = []
    for fig in figures.values():
        if not fig.runs:
            continue
        summary = fig.summary()
        row: dict[str, Any] = {"key": fig.key, "title": fig.title, "unit": fig.unit, **summary, "goal": fig.goal}
        if fig.unit in MS_UNITS:  # stored in seconds, shown in ms
            row.update({k: summary[k] * 1000 for k in ("median", "p99", "spread_low", "spread_high")})
        base = figures.get(fig.baseline) if fig.baseline else None
        if base is not None and base.runs:
            row["baseline"] = base.key
            row["ratio"] = ratio(fig, base)
        out.append(row)
    return out


def proxy_added(figures: dict[str, Figure]) -> list[dict[str, Any]]:
    """What each hop adds to the direct request, per repetition: p50 and p99 differences (ms)."""
    out = []
    for kind in ("get", "embed"):
        direct = figures.get(f"proxy.{kind}.direct")
        if direct is None or not direct.runs:
            continue
        for name in ("premd", "before", "floor", "openai", "openai-before"):
            via = figures.get(f"proxy.{kind}.{name}")
            if via is None or not via.runs:
                continue
            p50 = [v * 1000 for v in added(via, direct, 0.5)]
            p99 = [v * 1000 for v in added(via, direct, 0.99)]
            out.append(
                {
                    "key": via.key,
                    "title": via.title,
                    "added_p50_ms": statistics.median(p50),
                    "added_p99_ms": statistics.median(p99),
                    "spread_p50_ms": [min(p50), max(p50)],
                }
            )
    return out


def goals(figures: dict[str, Figure]) -> list[dict[str, Any]]:
    """Each goal of issue 13 that this run measured: the target, what was measured, met or not."""
    out: list[dict[str, Any]] = []

    def add(goal: str, measured: str, met: bool) -> None:
        out.append({"goal": goal, "measured": measured, "met": met})

    for row in proxy_added(figures):
        if row["key"] in ("proxy.get.premd", "proxy.embed.premd"):
            p50, p99 = row["added_p50_ms"], row["added_p99_ms"]
            add(
                f"{row['title']}: added <= 0.25 ms p50, <= 1 ms p99",
                f"{p50:.3f} ms p50, {p99:.3f} ms p99",
                p50 <= 0.25 and p99 <= 1.0,
            )
    rps, direct = figures.get("proxy.rps.premd"), figures.get("proxy.rps.direct")
    if rps and direct and rps.runs and direct.runs:
        share = ratio(rps, direct)
        add("proxy throughput >= 70% of direct at 16 connections", f"{share:.0%}", share >= 0.7)
    for key in ("loop.same", "loop.apart"):
        fig = figures.get(key)
        base = figures.get(fig.baseline) if fig and fig.baseline else None
        if fig and base and fig.runs and base.runs:
            gap = (percentile(fig.samples, 0.99) - percentile(base.samples, 0.99)) * 1000
            add(f"{fig.title}: p99 within 1 ms of {base.title}", f"{gap:+.3f} ms", gap <= 1.0)
    for size, limit in ((1000, 3.0), (10_000, 30.0)):
        fig = figures.get(f"listing.{size}.facts")
        if fig and fig.runs:
            p50 = statistics.median(fig.samples) * 1000
            add(
                f"GET /v1/services/ at {size:,} services, host facts changing: p50 <= {limit:g} ms",
                f"{p50:.2f} ms",
                p50 <= limit,
            )
        fig = figures.get(f"listing.{size}.revalidated")  # the same polls with If-None-Match (ETag)
        if fig and fig.runs:
            p50 = statistics.median(fig.samples) * 1000
            add(
                f"GET /v1/services/ at {size:,} services, host facts changing, revalidated with If-None-Match: "
                f"p50 <= {limit:g} ms",
                f"{p50:.2f} ms",
                p50 <= limit,
            )
    premd, plain = figures.get("lifecycle.ready.premd"), figures.get("lifecycle.ready.plain")
    if premd and plain and premd.runs and plain.runs:
        gap = (statistics.median(premd.samples) - statistics.median(plain.samples)) * 1000
        add("create-to-ready within 50 ms of plain aiodocker", f"{gap:+.1f} ms", gap <= 50)
    # lifecycle and event streams (bench/lifecycle.py, bench/bus.py)
    pull, docker_pull = figures.get("lifecycle.pull.premd"), figures.get("lifecycle.pull.plain")
    if pull and docker_pull and pull.runs and docker_pull.runs:
        share = ratio(pull, docker_pull)
        add("image download within 5% of docker pull (median ratio)", f"{share:.2f}x docker pull", share <= 1.05)
    rss_first, rss_second = figures.get("sse.rss.batch1"), figures.get("sse.rss.batch2")
    if rss_first and rss_second and rss_first.runs and rss_second.runs:
        grown = statistics.median(rss_second.samples) - statistics.median(rss_first.samples)
        add(
            f"{rss_second.title.split(',')[1].strip()}: gateway memory bounded "
            "(the second batch of events adds < 2 MB RSS)",
            f"{grown / 1e6:+.1f} MB",
            grown < 2e6,
        )
    startup = figures.get("serve.startup")
    if startup and startup.runs:
        value = statistics.median(startup.samples)
        add("premd serve exec to healthy GET /v1/ under 1 s", f"{value:.2f} s", value < 1.0)
    rss = figures.get("serve.rss")
    if rss and rss.runs:
        value = statistics.median(rss.samples) / 1e6
        add("premd serve RSS idle under 80 MB", f"{value:.0f} MB", value < 80)
    # --- serveproc: the gateway's loop in premd serve while registry_sync validates (issue 13) ---
    idle, busy = figures.get("serve.loop.idle"), figures.get("serve.loop.busy")
    if idle and busy and idle.runs and busy.runs:
        gap = (percentile(busy.samples, 0.99) - percentile(idle.samples, 0.99)) * 1000
        goal = "premd serve: GET /v1/ p99 within 1 ms of idle while 10,000 manifests are validated"
        add(goal, f"{gap:+.2f} ms", gap <= 1)
    return out


def markdown(machine: dict[str, str], figures: dict[str, Figure], reps: int, quick: bool, notes: list[str]) -> str:
    lines = ["# premd benchmark report (`python -m bench`)", ""]
    lines += [f"{'Quick run' if quick else 'Full run'}, {reps} repetition(s) per figure; spread = lowest and highest"]
    lines += ["median of the repetitions. Ratios are medians over the baseline's median, measured side by side.", ""]
    lines += ["## Machine", ""] + [f"- {k}: {v}" for k, v in machine.items()]
    lines += ["", "## Goals (issue 13)", "", "| goal | measured | met |", "|---|---|---|"]
    lines += [f"| {g['goal']} | {g['measured']} | {'yes' if g['met'] else '**no**'} |" for g in goals(figures)]
    added_rows = proxy_added(figures)
    if added_rows:
        lines += ["", "## What the proxy adds to a direct request (ms; median over repetitions)", ""]
        lines += ["| path | added p50 | added p99 | p50 spread |", "|---|---:|---:|---|"]
        for row in added_rows:
            low, high = row["spread_p50_ms"]
            lines.append(
                f"| {row['title']} | {row['added_p50_ms']:.3f} | {row['added_p99_ms']:.3f} | {low:.3f} .. {high:.3f} |"
            )
    lines += ["", "## Every figure", ""]
    lines += [
        "| figure | unit | n | median | p99 | spread | baseline | ratio |",
        "|---|---|---:|---:|---:|---|---|---:|",
    ]
    for row in rows(figures):
        unit = row["unit"]
        spread = f"{_num(row['spread_low'], unit)} .. {_num(row['spread_high'], unit)}"
        ratio_text = f"{row['ratio']:.2f}" if "ratio" in row else ""
        lines.append(
            f"| {row['title']} | {unit} | {int(row['n'])} | {_num(row['median'], unit)} | {_num(row['p99'], unit)} | "
            f"{spread} | "
            f"{row.get('baseline', '')} | {ratio_text} |"
        )
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    lines += ["", "Plots: `proxy_latency.png` (distributions, proxy vs direct), `listing.png` (list vs services).", ""]
    return "\n".join(lines)


def write(
    out: Path, machine: dict[str, str], figures: dict[str, Figure], reps: int, quick: bool, notes: list[str]
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(markdown(machine, figures, reps, quick, notes))
    document = {
        "machine": machine,
        "repetitions": reps,
        "quick": quick,
        "goals": goals(figures),
        "proxy_added": proxy_added(figures),
        "figures": rows(figures),
        "notes": notes,
    }
    (out / "report.json").write_text(json.dumps(document, indent=2) + "\n")
    plot(out, figures)


def plot(out: Path, figures: dict[str, Figure]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, kind, title in zip(axes, ("get", "embed"), ("GET /v1/", "POST /v1/embeddings (2 KB)"), strict=True):
        for name, label in LABELS.items():
            figure = figures.get(f"proxy.{kind}.{name}")
            if figure is None or not figure.runs:
                continue
            values = sorted(v * 1000 for v in figure.samples)
            cut = values[: max(1, int(len(values) * 0.995))]
            ax.ecdf(cut, label=label)
        ax.set_title(title)
        ax.set_xlabel("latency (ms)")
        ax.set_ylabel("share of requests")
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.tight_layout()
    fig.savefig(out / "proxy_latency.png", dpi=100)
    plt.close(fig)

    sizes = [s for s in (1000, 10_000) if f"listing.{s}.facts" in figures]
    if not sizes:
        return
    fig, ax = plt.subplots(figsize=(10, 5))
    data, labels = [], []
    for size in sizes:
        cases = (
            ("steady", "unchanged"),
            ("facts", "facts\nchanged"),
            ("revalidated", "If-None-\nMatch"),
            ("floor", "bare\nserver"),
        )
        for case, label in cases:
            figure = figures.get(f"listing.{size}.{case}")
            if figure is not None and figure.runs:
                data.append([v * 1000 for v in figure.samples])
                labels.append(f"{size:,}\n{label}")
    ax.boxplot(data, tick_labels=labels)
    ax.set_yscale("log")
    ax.set_ylabel("GET /v1/services/ latency (ms)")
    ax.set_title("service list vs number of services")
    fig.tight_layout()
    fig.savefig(out / "listing.png", dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------- kept samples (``python -m bench --keep``)

SAMPLES = "samples.json"
"""Every figure's samples and the suite that measured it: a later run with ``--keep`` reruns some suites and
keeps the others' figures, so one report holds every suite without running them all again."""


def save_samples(out: Path, figures: dict[str, Figure], suite_of: dict[str, str], when: dict[str, str]) -> None:
    document = {
        key: {
            "suite": suite_of.get(key, ""),
            "measured": when.get(suite_of.get(key, ""), ""),
            "title": fig.title,
            "unit": fig.unit,
            "runs": fig.runs,
            "baseline": fig.baseline,
            "goal": fig.goal,
            "higher_is_better": fig.higher_is_better,
        }
        for key, fig in figures.items()
        if fig.runs
    }
    (out / SAMPLES).write_text(json.dumps(document, separators=(",", ":")) + "\n")


def load_samples(out: Path, rerun: list[str]) -> tuple[dict[str, Figure], dict[str, str], dict[str, str]]:
    """The figures of the last run's suites that are not run again: (figures, suite of each, when each ran)."""
    path = out / SAMPLES
    if not path.exists():
        return {}, {}, {}
    figures: dict[str, Figure] = {}
    suite_of: dict[str, str] = {}
    when: dict[str, str] = {}
    for key, row in json.loads(path.read_text()).items():
        if row["suite"] in rerun or not row["suite"]:
            continue
        figures[key] = Figure(
            key,
            row["title"],
            unit=row["unit"],
            runs=row["runs"],
            baseline=row["baseline"],
            goal=row["goal"],
            higher_is_better=row["higher_is_better"],
        )
        suite_of[key] = row["suite"]
        when[row["suite"]] = row["measured"]
    return figures, suite_of, when
