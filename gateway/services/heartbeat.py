"""Server heartbeats: ``system:heartbeat`` {id} every interval, ``system:heartbeat-ack`` back.

A round sends one heartbeat id to every connection (encoded once, handed out paced) and,
``timeout`` seconds later, counts a miss for every connection that was there at the start and
has not acknowledged. From ``warn_after`` misses on each miss brings a warning; at
``max_missed`` the connection is closed. Any acknowledgement of a recent heartbeat resets the
count. One task drives all connections: an idle connection costs a dict entry, not a timer.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from ..pacing import paced
from ..protocol.close import CloseReason
from ..protocol.errors import ErrorCode, GatewayError
from ..protocol.events import Outbound
from ..protocol.inbound import HeartbeatAck
from ..protocol.timestamps import iso_timestamp
from .ports import Delivery


@dataclass(frozen=True, slots=True)
class RoundResult:
    warnings: list[tuple[str, int]]  # (sid, missed so far)
    timed_out: list[str]


class HeartbeatBook:
    """Miss counting, with no clock and no I/O."""

    def __init__(self, *, warn_after: int, max_missed: int, remembered_rounds: int = 8) -> None:
        self._warn_after = warn_after
        self._max_missed = max_missed
        self._missed: dict[str, int] = {}
        self._recent: deque[str] = deque(maxlen=remembered_rounds)
        self._expected: set[str] = set()
        self._acked: set[str] = set()

    def add(self, sid: str) -> None:
        self._missed[sid] = 0

    def remove(self, sid: str) -> None:
        self._missed.pop(sid, None)
        self._expected.discard(sid)

    def open_round(self, round_id: str) -> None:
        self._recent.append(round_id)
        self._expected = set(self._missed)
        self._acked = set()

    def ack(self, sid: str, round_id: str) -> bool:
        """True when *round_id* is a heartbeat this server sent recently."""
        if round_id not in self._recent or sid not in self._missed:
            return False
        self._missed[sid] = 0
        self._acked.add(sid)
        return True

    def close_round(self) -> RoundResult:
        warnings: list[tuple[str, int]] = []
        timed_out: list[str] = []
        for sid in self._expected - self._acked:
            if sid not in self._missed:
                continue
            missed = self._missed[sid] + 1
            self._missed[sid] = missed
            if missed >= self._max_missed:
                timed_out.append(sid)
            elif missed >= self._warn_after:
                warnings.append((sid, missed))
        self._expected = set()
        return RoundResult(warnings, timed_out)

    def missed(self, sid: str) -> int | None:
        return self._missed.get(sid)

    def __len__(self) -> int:
        return len(self._missed)


class HeartbeatService:
    def __init__(
        self,
        delivery: Delivery,
        *,
        interval: float,
        timeout: float,
        warn_after: int,
        max_missed: int,
        new_id: Callable[[], str] = lambda: str(uuid.uuid4()),
        on_warnings: Callable[[int], None] | None = None,
        on_timeouts: Callable[[int], None] | None = None,
    ) -> None:
        """*on_warnings* and *on_timeouts* hear how many of each a round brought (once per
        round, not per connection: a counter's lock per warning was 7.5% of a node's time in a
        round that warned 10 000 connections)."""
        self._delivery = delivery
        self._interval = interval
        self._timeout = timeout
        self._new_id = new_id
        self._on_warnings = on_warnings
        self._on_timeouts = on_timeouts
        self.book = HeartbeatBook(warn_after=warn_after, max_missed=max_missed)

    def connected(self, sid: str) -> None:
        self.book.add(sid)

    def disconnected(self, sid: str) -> None:
        self.book.remove(sid)

    def ack(self, sid: str, message: HeartbeatAck) -> None:
        if not self.book.ack(sid, message.id):
            raise GatewayError(
                ErrorCode.INVALID_FORMAT, f"Unknown or expired heartbeat id {message.id!r}"
            )

    async def run(self) -> None:
        """Rounds forever, one every interval whatever a round takes; one task for the whole
        process."""
        loop = asyncio.get_running_loop()
        starts = loop.time() + self._interval - self._timeout
        while True:
            await asyncio.sleep(max(0.0, starts - loop.time()))
            if loop.time() - starts > self._interval:
                # A loop that stalled for more than a round: go on from now instead of running
                # the rounds it missed back to back (each would count as missed by everyone).
                starts = loop.time()
            starts += self._interval
            round_id = self._new_id()
            self.book.open_round(round_id)
            if len(self.book):
                # Local only: another process's connections answer to that process's book.
                # Paced (gateway.pacing), so the timeout counts from the last one handed out.
                await self._delivery.broadcast(
                    Outbound.HEARTBEAT, {"id": round_id}, local_only=True
                )
            await asyncio.sleep(self._timeout)
            await self._apply(self.book.close_round())

    async def _apply(self, result: RoundResult) -> None:
        if result.warnings and self._on_warnings is not None:
            self._on_warnings(len(result.warnings))
        if result.timed_out and self._on_timeouts is not None:
            self._on_timeouts(len(result.timed_out))
        # Everyone who missed the same number of rounds gets the same warning: one packet,
        # encoded once, handed out paced like a broadcast.
        by_count: dict[int, list[str]] = {}
        for sid, missed in result.warnings:
            by_count.setdefault(missed, []).append(sid)
        for missed, sids in sorted(by_count.items()):
            await self._delivery.notify(
                sids,
                Outbound.HEARTBEAT_WARNING,
                {
                    "message": f"Connection unstable - missed {missed} heartbeats",
                    "missedHeartbeats": missed,
                    "timestamp": iso_timestamp(),
                },
            )
        async for sid in paced(result.timed_out):
            await self._delivery.close(
                sid,
                CloseReason.HEARTBEAT_TIMEOUT,
                "Missed too many heartbeats; the connection is considered dead",
            )
