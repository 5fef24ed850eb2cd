"""Who is connected and as whom: ``system:setData``, ``system:clients``, ``system:followed``."""

from __future__ import annotations

import asyncio
import base64
import binascii
import bisect
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..observability.logs import printable
from ..protocol.close import CloseReason
from ..protocol.codec import encoded_size
from ..protocol.errors import ErrorCode, GatewayError, Reply
from ..protocol.events import Outbound
from ..protocol.inbound import ClientsPage, SetData
from ..protocol.outbound import ClientEntry
from ..protocol.timestamps import iso_timestamp
from ..store.base import Address, Claim, Presence, PresenceStore, UsernameTaken
from .ports import Delivery

log = logging.getLogger("wshub.presence")

USERNAME_TAKEN = "Username already taken"
SESSION_REPLACED = "Another connection took this session's username"


class PresenceService:
    def __init__(
        self,
        store: PresenceStore,
        delivery: Delivery,
        *,
        max_metadata_bytes: int,
        listing: ClientListing,
        claim: Claim = Claim.UNIQUE,
    ) -> None:
        self._store = store
        self._delivery = delivery
        self._max_metadata_bytes = max_metadata_bytes
        self._listing = listing
        self._claim = claim
        self._reserved: set[str] = set()

    def reserve_username(self, name: str) -> None:
        """Keep *name* (in any letter case) from every client: the server API's sender name."""
        self._reserved.add(name.casefold())

    async def claim(self, sid: str, username: str | None, metadata: Mapping[str, Any]) -> Presence:
        """Save the connection's name and metadata under the claim policy.

        A name held by connections that may be dead (a phone that changed networks leaves a
        half-open connection for the ping timeout) is not refused outright: each holder is
        probed, and one that does not answer is displaced. A live holder is never displaced by
        a stranger. Displaced holders' sessions are ended. Raises :class:`UsernameTaken`.
        """
        try:
            saved = await self._store.save(sid, username, metadata, claim=self._claim)
        except UsernameTaken as taken:
            dead = await self._first_dead(taken.holders)
            if dead is None:
                raise
            log.info(
                "holder %s of %s did not answer a probe: displaced", dead.sid, printable(username)
            )
            saved = await self._store.save(
                sid, username, metadata, claim=self._claim, evict=dead.sid
            )
        for address in saved.displaced:
            await self._delivery.close(address, CloseReason.SESSION_REPLACED, SESSION_REPLACED)
        return saved.presence

    async def _first_dead(self, holders: Sequence[Address]) -> Address | None:
        for holder in holders:
            if not await self._delivery.alive(holder):
                return holder
        return None

    async def set_data(
        self, sid: str, message: SetData, *, forced_username: str | None = None
    ) -> Reply:
        """Merge *message* into the connection's metadata (a partial update).

        *forced_username* is the name an authenticated connection must use (its token subject).
        """
        current = await self._require(sid)
        patch = message.patch()
        updated_fields = list(patch)
        username = patch.pop("username", current.username)
        if forced_username is not None and username not in (None, forced_username):
            raise GatewayError(
                ErrorCode.FORBIDDEN,
                f"This connection is authenticated as {forced_username!r}; "
                "it cannot use another username",
                reply=_data_set_failure("Username does not match the authenticated user"),
            )
        if username is not None and username.casefold() in self._reserved:
            raise GatewayError(
                ErrorCode.DUPLICATE_USERNAME,
                f"Username {username!r} is already taken",
                reply=_data_set_failure(USERNAME_TAKEN),
            )
        metadata = {**current.metadata, **patch}
        size = encoded_size(metadata) + len((username or "").encode())
        if size > self._max_metadata_bytes:
            raise GatewayError(
                ErrorCode.PAYLOAD_TOO_LARGE,
                f"User data would take {size} bytes; the limit (max_metadata_bytes) is "
                f"{self._max_metadata_bytes}",
                reply=_data_set_failure("User data too large"),
            )
        try:
            updated = await self.claim(sid, username, metadata)
        except UsernameTaken:
            raise GatewayError(
                ErrorCode.DUPLICATE_USERNAME,
                f"Username {username!r} is already taken",
                reply=_data_set_failure(USERNAME_TAKEN),
            ) from None
        if updated.username != current.username:
            log.info("username claimed: %s", printable(updated.username))
        await self._announce_follows(current, updated)
        return Reply(
            Outbound.DATA_SET,
            {"success": True, "updatedFields": updated_fields, "timestamp": iso_timestamp()},
        )

    async def clients(self, request: ClientsPage) -> Reply:
        return await self._listing.page(request)

    async def _announce_follows(self, before: Presence, after: Presence) -> None:
        """``system:followed`` to each connected user that *after* newly follows.

        A connection without a username has no name to announce, so it announces nothing.
        """
        if after.username is None:
            return
        already = set(before.following) if before.username == after.username else set()
        payload: dict[str, Any] | None = None
        for name in after.following:
            if name in already or name == after.username:
                continue
            targets = await self._store.connections_of(name)
            if not targets:
                continue
            payload = payload or {"username": after.username, "timestamp": iso_timestamp()}
            await self._delivery.send(targets, Outbound.FOLLOWED, payload)

    async def _require(self, sid: str) -> Presence:
        presence = await self._store.get(sid)
        if presence is None:
            # The transport registers a connection before any of its events run.
            raise LookupError(f"no presence for connection {sid}")
        return presence


def _data_set_failure(reason: str) -> Reply:
    return Reply(
        Outbound.DATA_SET, {"success": False, "error": reason, "timestamp": iso_timestamp()}
    )


class ClientListing:
    """``system:clients``, a page at a time, cut from one snapshot of the list.

    The list is cluster-wide (a walk of every entry in Redis), so its cost grows with the hub;
    one snapshot serves every request within ``ttl`` seconds (requests that arrive while it is
    being taken wait for the same one), and each request gets one page of it.
    """

    def __init__(
        self,
        store: PresenceStore,
        *,
        page_size: int,
        max_page_size: int,
        ttl: float,
        clock: Callable[[], float],
    ) -> None:
        self._store = store
        self._page_size = page_size
        self._max_page_size = max_page_size
        self._ttl = ttl
        self._clock = clock
        self._taken_at = float("-inf")
        self._presences: list[Presence] = []
        self._keys: list[tuple[str, str]] = []
        self._taking: asyncio.Future[None] | None = None

    async def page(self, request: ClientsPage) -> Reply:
        await self._fresh()
        presences, keys = self._presences, self._keys
        limit = min(request.limit or self._page_size, self._max_page_size)
        if request.cursor is not None:
            start = bisect.bisect_right(keys, _read_cursor(request.cursor))
        else:
            start = min(request.offset or 0, len(presences))
        end = start + limit
        return Reply(
            Outbound.CLIENTS,
            {
                "clients": [_entry(p) for p in presences[start:end]],
                "count": len(presences),
                "timestamp": iso_timestamp(),
                "nextCursor": _cursor(keys[end - 1]) if end < len(presences) else None,
            },
        )

    async def _fresh(self) -> None:
        if self._clock() - self._taken_at < self._ttl:
            return
        if self._taking is None:
            self._taking = asyncio.ensure_future(self._take())
        taking = self._taking
        try:
            await asyncio.shield(taking)
        finally:
            if self._taking is taking and taking.done():
                self._taking = None

    async def _take(self) -> None:
        # Only the order is prepared here; a request builds the entries of its own page (a
        # snapshot of 10 000 built in full took about 50 ms of the loop, once a second).
        presences = sorted(await self._store.clients(), key=lambda p: (p.connect_time, p.sid))
        self._presences = presences
        self._keys = [(p.connect_time, p.sid) for p in presences]
        self._taken_at = self._clock()


def _entry(presence: Presence) -> ClientEntry:
    return {
        "id": presence.sid,
        "username": presence.username,
        "connectTime": presence.connect_time,
        "following": presence.following,
        "profile": presence.profile,
    }


def _cursor(key: tuple[str, str]) -> str:
    return base64.urlsafe_b64encode(f"{key[0]}\n{key[1]}".encode()).decode().rstrip("=")


def _read_cursor(cursor: str) -> tuple[str, str]:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError):
        text = ""
    connect_time, newline, sid = text.partition("\n")
    if not newline:
        raise GatewayError(ErrorCode.INVALID_FORMAT, "system:clients: cursor: not one of ours")
    return connect_time, sid
