"""Typing indicators. A start without a stop ends by itself after ``typing_timeout`` seconds, and
every indicator of a connection ends when it disconnects.

:class:`TypingTracker` is the bookkeeping with the clock passed in; :class:`TypingService` puts
it on the wire. One timer serves every connection (:mod:`gateway.scheduling`).
"""

from __future__ import annotations

from collections.abc import Callable

from ..protocol.errors import ErrorCode, GatewayError
from ..protocol.events import Outbound
from ..protocol.inbound import Typing
from ..protocol.timestamps import iso_timestamp
from ..scheduling import DeadlineQueue, DeadlineTimer
from ..store.base import Presence, PresenceStore
from .identity import identified, sender_of
from .ports import Delivery

Pair = tuple[str, str]  # (sender sid, target sid)


class TypingTracker:
    def __init__(self, timeout: float) -> None:
        self._timeout = timeout
        self._pending: DeadlineQueue[Pair] = DeadlineQueue()

    def start(self, pair: Pair, now: float) -> bool:
        """Start or refresh; True when the pair was not typing before."""
        return self._pending.set(pair, now + self._timeout)

    def stop(self, pair: Pair) -> bool:
        return self._pending.discard(pair)

    def expire(self, now: float) -> list[Pair]:
        return self._pending.pop_due(now)

    def drop(self, sid: str) -> list[Pair]:
        """Forget every pair *sid* is part of; returns the pairs it was typing in as sender."""
        ended = [pair for pair in self._pending if sid in pair]
        for pair in ended:
            self._pending.discard(pair)
        return [pair for pair in ended if pair[0] == sid]

    @property
    def pending(self) -> DeadlineQueue[Pair]:
        return self._pending

    def next_deadline(self) -> float | None:
        return self._pending.next_deadline()

    def __len__(self) -> int:
        return len(self._pending)


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
        self._timer = DeadlineTimer(self._tracker.pending, clock)

    async def start(self, sid: str, message: Typing) -> None:
        sender, target = await self._resolve(sid, message)
        was_idle = not self._tracker
        if self._tracker.start((sid, target), self._clock()):
            await self._update(sender, target, is_typing=True)
        if was_idle:
            # Every deadline is now + timeout, so only the first one can be the earliest.
            self._timer.poke()

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
            await self._timer.wait_due()
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
