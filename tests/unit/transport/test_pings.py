"""One ping timer for every session: pings every interval, a PONG due within the timeout,
probes, and a crowd handled in chunks. Short real intervals on the loop's own clock."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from gateway.transport.pings import Pings


class Target:
    """pings.PingTarget, recording with the loop time."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.pings: list[tuple[str, float]] = []
        self.answers: list[str] = []
        self.timed_out_at: list[tuple[str, float]] = []
        self.ticks = 0
        self.ping_ticks: list[int] = []

    def send_ping(self, key: str) -> None:
        self.pings.append((key, self.loop.time()))
        self.ping_ticks.append(self.ticks)

    def answered(self, key: str) -> None:
        self.answers.append(key)

    async def timed_out(self, key: str) -> None:
        self.timed_out_at.append((key, self.loop.time()))


async def until(condition: Callable[[], bool], timeout: float = 2.0) -> None:
    for _ in range(int(timeout / 0.005)):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition not reached in time")


@pytest.fixture
async def setup() -> AsyncIterator[tuple[Pings[str], Target, asyncio.AbstractEventLoop]]:
    loop = asyncio.get_running_loop()
    target = Target(loop)
    pings: Pings[str] = Pings(target, interval=0.05, timeout=0.05, clock=loop.time, chunk=2)
    runner = asyncio.create_task(pings.run())
    yield pings, target, loop
    runner.cancel()
    await asyncio.gather(runner, return_exceptions=True)


async def test_a_ping_each_interval_and_a_pong_reschedules(setup) -> None:
    pings, target, loop = setup
    start = loop.time()
    pings.schedule("a")
    assert len(pings) == 1
    for round_ in range(3):
        await until(lambda: len(target.pings) > round_)  # noqa: B023
        key, at = target.pings[round_]
        assert key == "a"
        assert at - start >= 0.05 * (round_ + 1) - 0.001
        assert pings.overdue("a") is False
        pings.pong("a")
    assert target.answers == ["a", "a", "a"] and target.timed_out_at == []


async def test_no_pong_within_the_timeout_times_out_once(setup) -> None:
    pings, target, _ = setup
    pings.schedule("a")
    await until(lambda: bool(target.timed_out_at))
    (_, pinged), (_, out) = target.pings[0], target.timed_out_at[0]
    assert out - pinged >= 0.05 - 0.001
    await asyncio.sleep(0.15)
    assert len(target.pings) == 1 and len(target.timed_out_at) == 1  # never pinged again
    assert len(pings) == 0
    pings.pong("a")  # late: ignored
    assert target.answers == [] and len(pings) == 0


async def test_overdue_is_known_before_the_timer_runs() -> None:
    now = [0.0]
    target = Target(asyncio.get_running_loop())
    pings: Pings[str] = Pings(target, interval=1, timeout=1, clock=lambda: now[0])
    pings.schedule("a")
    pings._ping("a", now[0])  # what run() does once the interval is up
    assert pings.overdue("a") is False
    now[0] = 1.0
    assert pings.overdue("a") is True  # its PONG is late though no timer has fired yet
    assert pings.overdue("unknown") is False


async def test_unsolicited_pongs_are_ignored(setup) -> None:
    pings, target, _ = setup
    pings.pong("never-pinged")
    pings.schedule("a")
    pings.pong("a")  # before its ping: not due, so nothing to answer
    assert target.answers == [] and len(pings) == 1


async def test_forget_drops_a_key_and_fails_its_probes(setup) -> None:
    pings, target, _ = setup
    pings.schedule("a")
    probe = asyncio.create_task(pings.probe("a", within=1))
    await asyncio.sleep(0.01)
    pings.forget("a")
    assert await probe is False
    assert len(pings) == 0
    await asyncio.sleep(0.12)
    assert target.timed_out_at == []


async def test_a_probe_pings_now_and_waits_for_the_pong(setup) -> None:
    pings, target, _ = setup
    pings.schedule("a")
    probe = asyncio.create_task(pings.probe("a", within=1))
    await asyncio.sleep(0)
    assert [k for k, _ in target.pings] == ["a"]  # at once, not at the interval
    second = asyncio.create_task(pings.probe("a", within=1))
    await asyncio.sleep(0)
    assert len(target.pings) == 1  # a PONG is due already: no second ping
    pings.pong("a")
    assert await probe is True and await second is True
    assert pings._probes == {}


async def test_a_probe_without_pong_is_false_within_its_time() -> None:
    loop = asyncio.get_running_loop()
    target = Target(loop)
    pings: Pings[str] = Pings(target, interval=10, timeout=5, clock=loop.time)
    pings.schedule("b")
    started = loop.time()
    assert await pings.probe("b", within=0.05) is False
    assert 0.04 <= loop.time() - started < 1.0  # its own bound, not the 5 s ping timeout
    assert pings._probes == {} and pings.overdue("b") is False  # the PONG may still come
    pings.pong("b")
    assert target.answers == ["b"]


async def test_a_crowd_due_at_once_is_pinged_in_chunks(setup) -> None:
    pings, target, _ = setup

    async def observe() -> None:
        while True:
            target.ticks += 1
            await asyncio.sleep(0)

    observer = asyncio.create_task(observe())
    for n in range(7):
        pings.schedule(f"k{n}")
    await until(lambda: len(target.pings) == 7)
    observer.cancel()
    per_tick: dict[int, int] = {}
    for tick in target.ping_ticks:
        per_tick[tick] = per_tick.get(tick, 0) + 1
    assert max(per_tick.values()) <= 2, per_tick  # chunk=2, then the loop gets a turn
    assert sorted(k for k, _ in target.pings) == [f"k{n}" for n in range(7)]
