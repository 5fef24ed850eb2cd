import asyncio

from gateway.scheduling import DeadlineQueue, DeadlineTimer


def test_moving_a_deadline_skips_the_stale_one() -> None:
    queue: DeadlineQueue[str] = DeadlineQueue()
    assert queue.set("a", 5) is True
    assert queue.set("a", 9) is False
    queue.set("b", 7)
    assert queue.next_deadline() == 7
    assert queue.pop_due(8) == ["b"]
    assert queue.pop_due(9) == ["a"]
    assert len(queue) == 0 and queue.next_deadline() is None


def test_discard() -> None:
    queue: DeadlineQueue[tuple[str, str]] = DeadlineQueue()
    queue.set(("a", "b"), 1)
    assert queue.discard(("a", "b")) is True
    assert queue.discard(("a", "b")) is False
    assert queue.pop_due(10) == []


async def test_timer_wakes_for_an_earlier_deadline() -> None:
    loop = asyncio.get_running_loop()
    queue: DeadlineQueue[str] = DeadlineQueue()
    timer = DeadlineTimer(queue, loop.time)
    queue.set("late", loop.time() + 60)
    waiter = asyncio.create_task(timer.wait_due())
    await asyncio.sleep(0.01)
    queue.set("soon", loop.time() + 0.05)
    timer.poke()
    await asyncio.wait_for(waiter, 1)
    assert queue.pop_due(loop.time()) == ["soon"]
