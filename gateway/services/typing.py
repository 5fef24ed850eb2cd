"""Typing indicators. A start without a stop ends by itself after ``typing_timeout`` seconds, and
every indicator of a connection ends when it disconnects.

:class:`TypingTracker` is the bookkeeping with the clock passed in; :class:`TypingService` puts
it on the wire. One timer serves every connection: the tracker keeps a heap of deadlines and the
service sleeps until the earliest.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
from collections.abc import Callable

from ..protocol.errors import ErrorCode, GatewayError
from ..protocol.events import Outbound
from ..protocol.inbound import Typing
from ..protocol.timestamps import iso_timestamp
from ..store.base import Presence, PresenceStore
from .identity import identified, sender_of
from .ports import Delivery

Pair = tuple[str, str]  # (sender sid, target sid)


class TypingTracker:
    def __init__(self, timeout: float) -> None:
        self._timeout = timeout
        self._deadlines: dict[Pair, float] = {}
        # Stale heap entries (refreshed or stopped pairs) are skipped when they surface.
        self._heap: list[tuple[float, Pair]] = []

    def start(self, pair: Pair, now: float) -> bool:
        """Start or refresh; True when the pair was not typing before."""
        is_new = pair not in self._deadlines
        deadline = now + self._timeout
        self._deadlines[pair] = deadline
        heapq.heappush(self._heap, (deadline, pair))
        return is_new

    def stop(self, pair: Pair) -> bool:
        return self._deadlines.pop(pair, None) is not None

    def expire(self, now: float) -> list[Pair]:
        expired: list[Pair] = []
        while self._heap and self._heap[0][0] <= now:
            deadline, pair = heapq.heappop(self._heap)
            if self._deadlines.get(pair) == deadline:
                del self._deadlines[pair]
                expired.append(pair)
        return expired

    def drop(self, sid: str) -> list[Pair]:
        """Forget every pair *sid* is part of; returns the pairs it was typing in as sender."""
        ended = [pair for pair in self._deadlines if sid in pair]
        for pair in ended:
            del self._deadlines[pair]
        return [pair for pair in ended if pair[0] == sid]

    def next_deadline(self) -> float | None:
        while self._heap and self._deadlines.get(self._heap[0][1]) != self._heap[0][0]:
            heapq.heappop(self._heap)
        return self._heap[0][0] if self._heap else None

    def __len__(self) -> int:
        return len(self._deadlines)


class TypingService:
    def __init__(
        self,
        store: PresenceStore,
        delivery: Delivery,
        *,
        timeout: float,
        clock: Callable[[], float],
    ) -> None:
        self._store = store
        self._delivery = delivery
        self._clock = clock
        self._tracker = TypingTracker(timeout)
        self._wake = asyncio.Event()

    async def start(self, sid: str, message: Typing) -> None:
        sender, target = await self._resolve(sid, message)
        earliest = self._tracker.next_deadline()
        if self._tracker.start((sid, target), self._clock()):
            await self._update(sender, target, is_typing=True)
        if earliest is None:
            self._wake.set()

    async def stop(self, sid: str, message: Typing) -> None:
        sender, target = await self._resolve(sid, message)
        self._tracker.stop((sid, target))
        await self._update(sender, target, is_typing=False)

    async def disconnected(self, presence: Presence) -> None:
        for _, target in self._tracker.drop(presence.sid):
            await self._update(presence, target, is_typing=False)

    async def run(self) -> None:
        """Send the automatic stops. One task for the whole process."""
        while True:
            deadline = self._tracker.next_deadline()
            self._wake.clear()
            if deadline is None:
                await self._wake.wait()
                continue
            delay = deadline - self._clock()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay)
            for sender_sid, target in self._tracker.expire(self._clock()):
                sender = await self._store.get(sender_sid)
                if sender is not None:
                    await self._update(sender, target, is_typing=False)

    async def _resolve(self, sid: str, message: Typing) -> tuple[Presence, str]:
        sender = await identified(self._store, sid, "send typing indicators")
        target = await self._store.sid_of(message.target)
        if target is None:
            raise GatewayError(
                ErrorCode.TARGET_NOT_FOUND, f"User {message.target!r} is not connected"
            )
        return sender, target

    async def _update(self, sender: Presence, target: str, *, is_typing: bool) -> None:
        await self._delivery.send(
            target,
            Outbound.TYPING_UPDATE,
            {"sender": sender_of(sender), "isTyping": is_typing, "timestamp": iso_timestamp()},
        )
