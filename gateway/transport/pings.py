"""Engine.IO pings for every session of the process, from one task.

Engine.IO v4: the server sends PING every ``ping_interval``; a client that does not answer PONG
within ``ping_timeout`` is gone. python-engineio runs a sleeping task per socket for this; here
two deadline queues (next ping, PONG due) serve every socket, and each wake-up handles at most
``chunk`` sockets before yielding, so a crowd that connected in the same second never makes one
loop step that pings thousands of clients.

A PONG also proves that the client read everything sent before the PING (one ordered stream),
which is what :meth:`Pings.pong` reports to its listener, and what :meth:`Pings.probe` waits for
when the gateway needs to know *now* whether a client is still there.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable
from typing import Generic, Protocol, TypeVar

from ..scheduling import DeadlineQueue, DeadlineTimer

K = TypeVar("K", bound=Hashable)


class PingTarget(Protocol[K]):  # type: ignore[misc]
    """Where pings go and what happens when one is answered or not."""

    def send_ping(self, key: K) -> None: ...

    def answered(self, key: K) -> None: ...

    async def timed_out(self, key: K) -> None: ...


class Pings(Generic[K]):
    def __init__(
        self,
        target: PingTarget[K],
        *,
        interval: float,
        timeout: float,
        clock: Callable[[], float],
        chunk: int = 500,
    ) -> None:
        self._target = target
        self._interval = interval
        self._timeout = timeout
        self._clock = clock
        self._chunk = chunk
        self._next: DeadlineQueue[K] = DeadlineQueue()
        self._due: DeadlineQueue[K] = DeadlineQueue()
        self._timer = DeadlineTimer(_Earliest(self._next, self._due), clock)
        self._probes: dict[K, list[asyncio.Future[bool]]] = {}

    def schedule(self, key: K) -> None:
        """Ping *key* one interval from now (after the handshake, and after each PONG)."""
        self._next.set(key, self._clock() + self._interval)
        self._timer.poke()

    def pong(self, key: K) -> None:
        if not self._due.discard(key):
            return  # unsolicited, or late after a timeout: nothing to answer
        self._target.answered(key)
        for waiter in self._probes.pop(key, ()):
            if not waiter.done():
                waiter.set_result(True)
        self.schedule(key)

    def forget(self, key: K) -> None:
        self._next.discard(key)
        self._due.discard(key)
        for waiter in self._probes.pop(key, ()):
            if not waiter.done():
                waiter.set_result(False)

    async def probe(self, key: K, within: float) -> bool:
        """Ping *key* now; True when its PONG comes within *within* seconds."""
        waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._probes.setdefault(key, []).append(waiter)
        if key not in self._due:
            self._ping(key, self._clock())
        try:
            async with asyncio.timeout(within):
                return await waiter
        except TimeoutError:
            return False
        finally:
            waiters = self._probes.get(key)
            if waiters is not None and waiter in waiters:
                waiters.remove(waiter)
                if not waiters:
                    del self._probes[key]

    def overdue(self, key: K) -> bool:
        """Whether *key*'s PONG is late (the timer may not have run yet)."""
        deadline = self._due.deadline(key)
        return deadline is not None and deadline <= self._clock()

    def __len__(self) -> int:
        return len(self._next) + len(self._due)

    async def run(self) -> None:
        """Send due pings and time out missing PONGs, forever; one task in all."""
        while True:
            await self._timer.wait_due()
            now = self._clock()
            for key in self._due.pop_due(now, limit=self._chunk):
                self._next.discard(key)
                await self._target.timed_out(key)
            for key in self._next.pop_due(now, limit=self._chunk):
                self._ping(key, now)
            await asyncio.sleep(0)  # let the connections' own work run between chunks

    def _ping(self, key: K, now: float) -> None:
        self._next.discard(key)
        self._due.set(key, now + self._timeout)
        self._target.send_ping(key)
        self._timer.poke()


class _Earliest:
    """The earlier of two queues' next deadlines, for one :class:`DeadlineTimer`."""

    def __init__(self, *queues: DeadlineQueue[K]) -> None:
        self._queues = queues

    def next_deadline(self) -> float | None:
        deadlines = [d for q in self._queues if (d := q.next_deadline()) is not None]
        return min(deadlines) if deadlines else None
