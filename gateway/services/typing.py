"""Typing indicators. A start without a stop ends by itself after ``typing_timeout`` seconds, and
every indicator of a connection ends when it disconnects.

:class:`TypingTracker` is the bookkeeping with the clock passed in; :class:`TypingService` puts
it on the wire. One timer serves every connection (:mod:`gateway.scheduling`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

from ..protocol.errors import ErrorCode, GatewayError
from ..protocol.events import Outbound
from ..protocol.inbound import Typing
from ..protocol.timestamps import iso_timestamp
from ..scheduling import DeadlineQueue, DeadlineTimer
from ..store.base import Address, Presence, PresenceStore, StoreUnavailable
from .identity import identified, sender_of
from .ports import Delivery

log = logging.getLogger("wshub.typing")
_CHUNK = 200
Pair = tuple[str, str]  # (sender sid, target username): a user may be on several connections


class TypingTracker:
    def __init__(self, timeout: float) -> None:
        self._timeout = timeout
        self._pending: DeadlineQueue[Pair] = DeadlineQueue()

    def start(self, pair: Pair, now: float) -> bool:
        """Start or refresh; True when the pair was not typing before."""
        return self._pending.set(pair, now + self._timeout)

    def stop(self, pair: Pair) -> bool:
        return self._pending.discard(pair)

    def expire(self, now: float, limit: int | None = None) -> list[Pair]:
        return self._pending.pop_due(now, limit)

    def drop(self, sid: str) -> list[Pair]:
        """Forget the pairs *sid* types in; returns them."""
        ended = [pair for pair in self._pending if pair[0] == sid]
        for pair in ended:
            self._pending.discard(pair)
        return ended

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
        sender, targets = await self._resolve(sid, message)
        was_idle = not self._tracker
        if self._tracker.start((sid, message.target), self._clock()):
            await self._update(sender, targets, is_typing=True)
        if was_idle:
            # Every deadline is now + timeout, so only the first one can be the earliest.
            self._timer.poke()

    async def stop(self, sid: str, message: Typing) -> None:
        sender, targets = await self._resolve(sid, message)
        self._tracker.stop((sid, message.target))
        await self._update(sender, targets, is_typing=False)

    async def disconnected(self, sid: str) -> None:
        """*sid*'s transport went: each indicator it was sending stops, and its targets hear so."""
        pairs = self._tracker.drop(sid)
        if pairs:
            await self._stop_all(sid, pairs)

    async def run(self) -> None:
        """Send the automatic stops. One task for the whole process."""
        while True:
            await self._timer.wait_due()
            for sender_sid, target in self._tracker.expire(self._clock(), limit=_CHUNK):
                await self._stop_all(sender_sid, [(sender_sid, target)])
            await asyncio.sleep(0)  # indicators started together end together: in steps

    async def _stop_all(self, sender_sid: str, pairs: list[Pair]) -> None:
        try:
            sender = await self._store.get(sender_sid)
            if sender is None:
                return
            for _, name in pairs:
                targets = await self._store.connections_of(name)
                if targets:
                    await self._update(sender, targets, is_typing=False)
        except StoreUnavailable as exc:
            # The targets' indicators end by themselves on their side; nothing is left here.
            log.warning(
                "could not tell typing targets that %d indicator(s) stopped: %s", len(pairs), exc
            )

    async def _resolve(self, sid: str, message: Typing) -> tuple[Presence, Sequence[Address]]:
        sender = await identified(self._store, sid, "send typing indicators")
        targets = await self._store.connections_of(message.target)
        if not targets:
            raise GatewayError(
                ErrorCode.TARGET_NOT_FOUND, f"User {message.target!r} is not connected"
            )
        return sender, targets

    async def _update(
        self, sender: Presence, targets: Sequence[Address], *, is_typing: bool
    ) -> None:
        await self._delivery.send(
            targets,
            Outbound.TYPING_UPDATE,
            {"sender": sender_of(sender), "isTyping": is_typing, "timestamp": iso_timestamp()},
        )
