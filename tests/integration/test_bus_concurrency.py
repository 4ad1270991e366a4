"""Slow endpoints answer requests concurrently, under a bound (issue 9, defect 6)."""

from __future__ import annotations

import asyncio

import msgspec
from nats.aio.client import Client as NATS

from common import bus


class Slow(msgspec.Struct, frozen=True):
    n: int


async def test_concurrent_endpoint_overlaps_requests_up_to_its_bound(nc: NATS) -> None:
    """Each answer waits until ``bound`` requests are being answered at once: served one at a time, none would."""
    bound = 4
    inside = 0
    most = 0
    all_in = asyncio.Event()

    async def slow(msg: Slow) -> Slow:
        nonlocal inside, most
        inside += 1
        most = max(most, inside)
        if inside >= bound:
            all_in.set()
        try:
            await all_in.wait()
            await asyncio.sleep(0)  # let the others see the event before the count drops
            return msg
        finally:
            inside -= 1

    ep = bus.endpoint("slow", "test.slow", Slow, slow, concurrency=bound)
    svc = await bus.serve(nc, "slow_test", "1.0.0", "test", [ep], bus.InFlight())
    try:
        replies = await asyncio.gather(
            *(bus.request(nc, "test.slow", Slow(n=i), Slow, timeout=5) for i in range(bound + 2))
        )
        assert sorted(r.n for r in replies) == list(range(bound + 2))
        assert most == bound  # overlapped, never beyond the bound
    finally:
        await svc.stop()
