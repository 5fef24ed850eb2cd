"""Where each username's connections are, remembered between lookups: no I/O, no clock of its own.

A message for a user needs the user's addresses (``user:{name}`` in Redis: one round trip). A
node that sends many messages would pay that round trip for every one, although routes change
only when a connection of the name connects, disconnects, moves or goes away. So each node keeps
the answers, and every node that changes a route tells all the others which names changed
(``gateway.transport.backplane``, one frame per step of the event loop), and they forget them.

Coherence, case by case:

- *A change elsewhere* reaches this node as :meth:`forget` right after the change was written,
  over the same pub/sub hop a message to that node takes: a message sent meanwhile goes where
  it would have gone with a fresh lookup made a moment earlier, the race every lookup has.
- *A lookup racing a change*: an answer read from Redis before a change but stored after the
  change was announced would stay stale. So a lookup takes a :meth:`ticket` before it asks
  Redis, and :meth:`store` keeps the answer only if nothing was forgotten for that name since.
- *Announcements lost* (the subscription was down, Redis restarted): :meth:`forget_all` on every
  resubscription and every restore; and no entry lives longer than *ttl* whatever happens.
- *A node gone*: its entries are dropped as soon as a message to it found nobody listening
  (:meth:`forget_node`), and when its connections are reaped every node forgets everything.

Negative answers (no connection holds the name) are kept too: a message for an offline user
is as common as one for an online user, and a claim of the name is announced like any change.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence

from .base import Address

# How many recent changes a ticket can be checked against; a lookup that outlives more changes
# than this is answered but not kept.
_RECENT = 4096


class RouteCache:
    """Bounded (*size* names, the oldest entry first out) and aged (*ttl* seconds)."""

    def __init__(self, *, ttl: float, size: int, clock: Callable[[], float]) -> None:
        self._ttl = ttl
        self._size = size
        self._clock = clock
        self._entries: dict[str, tuple[float, tuple[Address, ...]]] = {}
        self._seq = 0  # changes forgotten so far
        # (seq, name) of the latest changes; name None: everything was forgotten.
        self._recent: deque[tuple[int, str | None]] = deque(maxlen=_RECENT)
        self.hits = 0
        self.misses = 0

    def get(self, name: str) -> tuple[Address, ...] | None:
        """The addresses remembered for *name*, or None (ask the store, then :meth:`store`)."""
        entry = self._entries.get(name)
        if entry is not None:
            stored_at, addresses = entry
            if self._clock() - stored_at < self._ttl:
                self.hits += 1
                return addresses
            del self._entries[name]
        self.misses += 1
        return None

    def ticket(self) -> int:
        """Taken before the store is asked; hand it back to :meth:`store` with the answer."""
        return self._seq

    def store(self, name: str, addresses: Sequence[Address], ticket: int) -> None:
        """Keep *addresses* for *name* unless *name* changed since *ticket* was taken."""
        if ticket != self._seq and not self._unchanged_since(name, ticket):
            return
        self._entries.pop(name, None)  # re-inserted last: the oldest entries leave first
        if len(self._entries) >= self._size:
            del self._entries[next(iter(self._entries))]
        self._entries[name] = (self._clock(), tuple(addresses))

    def forget(self, names: Sequence[str]) -> None:
        for name in names:
            self._seq += 1
            self._recent.append((self._seq, name))
            self._entries.pop(name, None)

    def forget_all(self) -> None:
        self._seq += 1
        self._recent.append((self._seq, None))
        self._entries.clear()

    def forget_node(self, node: str) -> None:
        """Drop every entry that routes to *node* (it did not take a message)."""
        stale = [
            name
            for name, (_, addresses) in self._entries.items()
            if any(address.node == node for address in addresses)
        ]
        self.forget(stale)

    def __len__(self) -> int:
        return len(self._entries)

    def _unchanged_since(self, name: str, ticket: int) -> bool:
        if not self._recent or self._recent[0][0] > ticket + 1:
            return False  # more changes than remembered: cannot tell
        for seq, changed in reversed(self._recent):
            if seq <= ticket:
                break
            if changed is None or changed == name:
                return False
        return True
