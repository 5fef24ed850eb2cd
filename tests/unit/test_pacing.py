"""Pacing: a slice, then a pause until the event loop caught up (or patience ran out)."""

from __future__ import annotations

import asyncio
import time

from gateway.pacing import Pace, Turnstile, paced


async def busy(steps: int, each: float, log: list[str]) -> None:
    """Work that keeps the loop busy: *steps* passes of *each* seconds."""
    for _ in range(steps):
        time.sleep(each)  # noqa: ASYNC251 - blocking on purpose: the loop's pass takes this long
        await asyncio.sleep(0)
    log.append("busy done")


async def consume(items: range, pace: Pace, log: list[str]) -> None:
    async for item in paced(items, pace):
        log.append(f"item {item}")


async def test_the_next_slice_waits_until_the_loop_caught_up() -> None:
    log: list[str] = []
    pace = Pace(size=2, settle=0.002, patience=1.0)
    worker = asyncio.create_task(busy(5, 0.005, log))
    await asyncio.sleep(0)  # the busy work has begun
    await consume(range(4), pace, log)
    await worker
    assert log == ["item 0", "item 1", "busy done", "item 2", "item 3"]


async def test_a_loop_that_stays_busy_waits_no_longer_than_patience() -> None:
    log: list[str] = []
    pace = Pace(size=2, settle=0.002, patience=0.02)
    worker = asyncio.create_task(busy(20, 0.005, log))  # 100 ms of work
    await asyncio.sleep(0)
    await consume(range(4), pace, log)
    assert log == ["item 0", "item 1", "item 2", "item 3"]  # before the busy work ended
    await worker


async def test_no_pause_before_the_first_slice_or_after_the_last() -> None:
    pauses = 0

    class Counting(Pace):
        async def pause(self) -> None:
            nonlocal pauses
            pauses += 1

    items = [x async for x in paced(range(6), Counting(size=3))]
    assert (items, pauses) == (list(range(6)), 1)
    items = [x async for x in paced(range(7), Counting(size=3))]
    assert (items, pauses) == (list(range(7)), 3)


class Ticking(Pace):
    """A pause is one pass of the loop; the end of each is written to *log*."""

    def __init__(self, size: int, log: list[str]) -> None:
        super().__init__(size=size)
        object.__setattr__(self, "log", log)

    async def pause(self) -> None:
        await asyncio.sleep(0)
        self.log.append("pause")  # type: ignore[attr-defined]


async def arrive(turnstile: Turnstile, name: str, log: list[str]) -> None:
    await turnstile.through()
    log.append(name)


async def test_the_turnstile_lets_arrivals_through_in_order_a_slice_per_pause() -> None:
    log: list[str] = []
    turnstile = Turnstile(Ticking(size=2, log=log))
    await asyncio.gather(*(arrive(turnstile, f"c{i}", log) for i in range(5)))
    assert log == ["c0", "c1", "pause", "c2", "c3", "pause", "c4", "pause"]


async def test_a_caller_cancelled_at_the_turnstile_gives_its_place_to_the_next() -> None:
    log: list[str] = []
    turnstile = Turnstile(Ticking(size=1, log=log))
    first = asyncio.create_task(arrive(turnstile, "c0", log))
    gone = asyncio.create_task(arrive(turnstile, "gone", log))
    last = asyncio.create_task(arrive(turnstile, "c2", log))
    await asyncio.sleep(0)  # all three have arrived; c0 is through
    gone.cancel()
    await asyncio.gather(first, last, return_exceptions=True)
    assert gone.cancelled() and log == ["c0", "pause", "c2", "pause"]
