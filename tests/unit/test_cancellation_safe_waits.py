"""premd's own code bounds waits with ``asyncio.timeout``, never ``asyncio.wait_for``.

On Python 3.11, ``wait_for`` loses a cancellation that arrives as the awaited thing completes (it returns the
result instead). A loop that waits that way, such as the gateway's idle stopper, then never ends when its app
shuts down: that hung a gateway's teardown in the suite. ``asyncio.timeout`` does not lose it.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("common", "gateway", "scheduler", "builder", "registry_sync", "premd")


def test_no_product_module_uses_wait_for() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{n}"
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if "asyncio.wait_for(" in line
    ]
    assert found == [], found


async def _waiter(event: asyncio.Event, woke: list[int]) -> None:
    while True:
        event.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5.0):
                await event.wait()
        woke.append(1)


async def test_a_loop_waiting_with_a_timeout_ends_when_cancelled_as_it_wakes() -> None:
    event = asyncio.Event()
    woke: list[int] = []
    task = asyncio.create_task(_waiter(event, woke))
    await asyncio.sleep(0)  # the loop now waits on the event
    event.set()
    await asyncio.sleep(0)  # the event's waiter is done: the wake-up is on its way
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=2.0)
    assert task in done and task.cancelled()
