"""What a session may need again after its transport dies: the replayable events sent to it that
it has not been proven to have received.

Socket.IO connection state recovery (wire form of the reference server, socket.io 4.6+): the
CONNECT reply carries a private session id ``pid``; every replayable event carries an *offset*
as its last argument; a client that reconnects sends ``{pid, offset}`` in its CONNECT, and the
server sends it every event after that offset, before the CONNECT reply, then the same ``sid``
and ``pid``. The official JS client then reports ``socket.recovered === true``.

The reference server keeps every packet of the last two minutes in one list. Here each session
keeps its own short log, trimmed by proof of receipt: Engine.IO delivers packets in order on one
transport, so a PONG to a PING proves the client read everything queued before that PING
(:meth:`ReplayLog.confirm`). The log of a session whose client keeps up therefore holds about one
ping interval of events, and an idle session holds nothing (no log object at all).

Offsets are ``<node tag>.<counter>``: unique in the cluster, one per message (a broadcast's
recipients share it, so its packet is encoded once).
"""

from __future__ import annotations

import secrets
from collections import deque
from dataclasses import dataclass
from itertools import count


@dataclass(frozen=True, slots=True)
class Entry:
    seq: int
    offset: str
    text: str
    """The Socket.IO packet, offset included, as it was sent."""


class ReplayLog:
    __slots__ = ("_entries", "_limit", "_seq", "lost_before")

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._entries: deque[Entry] = deque()
        self._seq = 0
        self.lost_before = 0
        """Entries up to this sequence number were dropped unconfirmed (the log overflowed)."""

    @property
    def last_seq(self) -> int:
        return self._seq

    @property
    def full(self) -> bool:
        return len(self._entries) >= self._limit

    def append(self, offset: str, text: str) -> None:
        """Keep an event; past the limit the oldest unconfirmed one is dropped (and the session
        can then resume only from an offset after it)."""
        self._seq += 1
        if len(self._entries) >= self._limit:
            self.lost_before = self._entries.popleft().seq
        self._entries.append(Entry(self._seq, offset, text))

    def confirm(self, seq: int) -> None:
        """The client read everything up to *seq* (a PONG to a PING sent after it)."""
        entries = self._entries
        while entries and entries[0].seq <= seq:
            entries.popleft()
        if self.lost_before <= seq:
            self.lost_before = 0

    def after(self, offset: str | None) -> list[Entry] | None:
        """The events to replay to a client whose last event was *offset*; None when that
        cannot be known (the log dropped unconfirmed events the client may not have had)."""
        entries = list(self._entries)
        for index, entry in enumerate(entries):
            if entry.offset == offset:
                return entries[index + 1 :]
        # Not found: the client had nothing of the log, or only what was confirmed (and
        # trimmed). Either way it needs all of it, unless part of it is gone.
        if self.lost_before:
            return None
        return entries

    def __len__(self) -> int:
        return len(self._entries)


class Offsets:
    """Offsets for the messages this node originates."""

    def __init__(self, tag: str | None = None) -> None:
        self._tag = tag or secrets.token_hex(3)
        self._counter = count(1)

    def next(self) -> str:
        return f"{self._tag}.{next(self._counter):x}"


def without_offset(text: str, offset: str) -> str:
    """The packet as a client that takes no offsets gets it: ``2[...,"<offset>"]`` → ``2[...]``.

    (Offsets are hex and a dot, so their JSON form is the offset in quotes.)
    """
    return text[: -(len(offset) + 4)] + "]"
