"""Work for many connections, handed out in slices the event loop can digest.

Handing a heartbeat, a broadcast or a warning to every connection costs little at the moment
and a lot just after: each recipient's writer task wakes and writes, and each client's answer
comes back to be read. Chunking alone (yield after every N) does not bound that: one yield lets
the loop run the N writers just woken, then the next chunk follows at once, so until the crowd
is served the loop does little else, and every other client waits behind it (measured with
10 000 idle connections: a polite client's round trip up to 160 ms at each heartbeat round).

:func:`paced` yields after each slice until the loop has caught up: until one pass of the loop
takes less than ``settle`` (the writers of that slice ran, what came back meanwhile was read),
or ``patience`` has passed (a loop kept busy by other work does not stall the round for good).
A round goes as fast as the loop allows, and no pass of the loop holds more than about one
slice's worth of it.

:class:`Turnstile` paces work that arrives rather than work handed out: new connections. In a
reconnect storm thousands arrive within a second; started all at once, every handshake makes
progress at the same time, each step of each waits behind the same step of all the others, and
the handshakes finish late and together, so that clients time out (measured with 10 000
reconnecting at once: up to 2 311 failed first attempts). Through the turnstile they start in
arrival order, a slice at a time, whenever the loop has caught up: the same work, done first
come first served (0 failed). It does not make the work cheaper: a storm still saturates the
loop while it lasts.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Pace:
    size: int = 128
    """Items handed out between two pauses."""
    settle: float = 0.002
    """A pass of the loop shorter than this (seconds) means it caught up."""
    patience: float = 0.025
    """The longest pause (seconds), however busy the loop stays."""

    async def pause(self) -> None:
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self.patience
        while True:
            started = loop.time()
            await asyncio.sleep(0)  # one pass: everything ready before us runs first
            now = loop.time()
            if now - started < self.settle or now >= give_up:
                return


DEFAULT_PACE = Pace()


async def paced(items: Iterable[T], pace: Pace = DEFAULT_PACE) -> AsyncIterator[T]:
    """*items* one by one, with a :meth:`Pace.pause` after every ``pace.size`` of them (none
    after the last)."""
    count = 0
    for item in items:
        if count == pace.size:
            await pace.pause()
            count = 0
        yield item
        count += 1


class Turnstile:
    """Lets callers of :meth:`through` pass in arrival order, ``pace.size`` of them per pause.

    A caller that finds nobody waiting passes at once: the turnstile only costs anything when
    a crowd arrives together. Nothing is held once through, so a caller that then stalls (an
    idle socket) delays nobody."""

    def __init__(self, pace: Pace) -> None:
        self._pace = pace
        self._waiting: deque[asyncio.Future[None]] = deque()
        self._passed = 0  # since the last pause
        self._opener: asyncio.Task[None] | None = None

    async def through(self) -> None:
        if not self._waiting and self._passed < self._pace.size:
            self._passed += 1
            self._open()  # counts this pass of the loop
            return
        turn = asyncio.get_running_loop().create_future()
        self._waiting.append(turn)
        self._open()
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self._passed -= 1  # its place goes to the next one
            raise

    def _open(self) -> None:
        if self._opener is None or self._opener.done():
            self._opener = asyncio.create_task(self._run(), name="wshub:turnstile")

    async def _run(self) -> None:
        while True:
            await self._pace.pause()
            self._passed = 0
            while self._waiting and self._passed < self._pace.size:
                turn = self._waiting.popleft()
                if not turn.done():
                    turn.set_result(None)
                    self._passed += 1
            if not self._waiting and self._passed == 0:
                return
