"""Deadlines for many keys, served by one timer: the heap behind typing expiry and token expiry.

Setting a key again moves its deadline; stale heap entries are skipped when they surface, so
both ``set`` and ``discard`` are O(log n) and nothing is ever scanned.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
from collections.abc import Callable, Hashable, Iterator
from typing import Generic, Protocol, TypeVar

K = TypeVar("K", bound=Hashable)


class DeadlineQueue(Generic[K]):
    def __init__(self) -> None:
        self._deadlines: dict[K, float] = {}
        self._heap: list[tuple[float, int, K]] = []
        self._counter = 0  # tie-breaker: keys need not be orderable

    def set(self, key: K, deadline: float) -> bool:
        """Set or move *key*'s deadline; True when the key was not pending."""
        is_new = key not in self._deadlines
        self._deadlines[key] = deadline
        self._counter += 1
        heapq.heappush(self._heap, (deadline, self._counter, key))
        return is_new

    def deadline(self, key: K) -> float | None:
        return self._deadlines.get(key)

    def discard(self, key: K) -> bool:
        return self._deadlines.pop(key, None) is not None

    def pop_due(self, now: float, limit: int | None = None) -> list[K]:
        """The keys whose deadline has passed, earliest first (at most *limit* of them)."""
        due: list[K] = []
        while self._heap and self._heap[0][0] <= now and (limit is None or len(due) < limit):
            deadline, _, key = heapq.heappop(self._heap)
            if self._deadlines.get(key) == deadline:
                del self._deadlines[key]
                due.append(key)
        return due

    def next_deadline(self) -> float | None:
        while self._heap and self._deadlines.get(self._heap[0][2]) != self._heap[0][0]:
            heapq.heappop(self._heap)
        return self._heap[0][0] if self._heap else None

    def __contains__(self, key: object) -> bool:
        return key in self._deadlines

    def __iter__(self) -> Iterator[K]:
        return iter(list(self._deadlines))

    def __len__(self) -> int:
        return len(self._deadlines)


class Deadlines(Protocol):
    def next_deadline(self) -> float | None: ...


class DeadlineTimer:
    """Sleeps until the earliest deadline of a :class:`DeadlineQueue`; one task in all."""

    def __init__(self, queue: Deadlines, clock: Callable[[], float]) -> None:
        self._queue = queue
        self._clock = clock
        self._wake = asyncio.Event()

    def poke(self) -> None:
        """Call after setting a deadline that may be earlier than the one being waited for."""
        self._wake.set()

    async def wait_due(self) -> None:
        """Return once at least one deadline may have passed."""
        while True:
            deadline = self._queue.next_deadline()
            self._wake.clear()
            if deadline is None:
                await self._wake.wait()
                continue
            delay = deadline - self._clock()
            if delay <= 0:
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):  # a timer, not a task (wait_for makes one)
                    await self._wake.wait()
