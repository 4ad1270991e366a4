"""``python -m bench``: every measurement of premd, side by side, into bench/results/report.md + report.json.

Sets up what it needs (an embedded nats-server, stand-in services, the test bed's reference image on the
Docker engine for the scheduler's figures) and tears it down. ``--quick`` is a smoke run with few samples;
``--only gateway,registry`` runs some suites. A bench never fails for being slow: the report says which goals
were met and by how much.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from bench import builds, bus, gateway, lifecycle, openai_sdk, packages, registry, scheduler, serve
from bench.core import RESULTS, Figure, Progress, machine
from bench.report import load_samples, save_samples, write

Suite = Callable[[dict[str, Figure], Progress, bool, int], Awaitable[None]]
SUITES: dict[str, tuple[Suite, int]] = {
    # name: (run, progress steps per repetition)
    "gateway": (gateway.run, 5),
    "registry": (registry.run, 0),
    "scheduler": (scheduler.run, 0),
    "serve": (serve.run, 0),
    "openai": (openai_sdk.run, 0),
    "packages": (packages.run, 0),
    "builder": (builds.run, 0),
    # the bus round trip and the gateway's memory under SSE clients
    "bus": (bus.run, 2),
    # image download vs docker pull, a Docker event to an SSE client (needs the Docker engine)
    "lifecycle": (lifecycle.run, 0),
}
FIXED_STEPS = {
    "gateway": 0,
    "registry": 3,
    "scheduler": 1,
    "serve": 1,
    "openai": 1,
    "packages": 1,
    "builder": 1,
    "bus": 0,
    "lifecycle": 2,
}


async def main(only: list[str], quick: bool, reps: int, out: Path, keep: bool = False) -> None:
    details = machine()
    figures: dict[str, Figure] = {}
    notes: list[str] = []
    # --keep: the figures of suites not run now come from the last run's samples
    suite_of: dict[str, str] = {}
    when: dict[str, str] = {}
    if keep:
        figures, suite_of, when = load_samples(out, only)
        for suite, at in sorted(when.items()):
            notes.append(f"suite {suite!r}: figures kept from its run at {at} (--keep)")
    total = sum(SUITES[name][1] * reps + FIXED_STEPS[name] for name in only)
    progress = Progress(total)
    for name in only:
        run, _ = SUITES[name]
        when[name] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        try:
            await run(figures, progress, quick, reps)
        except Exception as exc:  # a suite that cannot run here (no Docker) is reported, the others go on
            notes.append(f"suite {name!r} did not complete: {exc!r}")
            progress.say(f"{name}: {exc!r}")
        write(out, details, figures, reps, quick, notes)  # after every suite: an interrupted run keeps its figures
        suite_of.update({key: name for key in figures if key not in suite_of})
        save_samples(out, figures, suite_of, when)
    progress.say(f"wrote {out / 'report.md'} and {out / 'report.json'}")


def cli() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="few samples: a smoke run")
    parser.add_argument("--reps", type=int, default=None, help="repetitions per figure (default 3, quick 1)")
    parser.add_argument("--only", default=",".join(SUITES), help=f"comma-separated suites of {', '.join(SUITES)}")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the report goes")
    parser.add_argument(
        "--keep", action="store_true", help="keep the last run's figures of the suites not run now (samples.json)"
    )
    args = parser.parse_args()
    only = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = [name for name in only if name not in SUITES]
    if unknown:
        parser.error(f"unknown suite(s): {', '.join(unknown)}")
    reps = args.reps or (1 if args.quick else 3)
    asyncio.run(main(only, args.quick, reps, args.out, args.keep))


if __name__ == "__main__":
    cli()
