"""Who is connected and as whom: ``system:setData``, ``system:clients``, ``system:followed``."""

from __future__ import annotations

import logging
from typing import Any

from ..protocol.codec import encoded_size
from ..protocol.errors import ErrorCode, GatewayError, Reply
from ..protocol.events import Outbound
from ..protocol.inbound import SetData
from ..protocol.outbound import ClientEntry
from ..protocol.timestamps import iso_timestamp
from ..store.base import Presence, PresenceStore, UsernameTaken
from .ports import Delivery

log = logging.getLogger("wshub.presence")

USERNAME_TAKEN = "Username already taken"


class PresenceService:
    def __init__(
        self, store: PresenceStore, delivery: Delivery, *, max_metadata_bytes: int
    ) -> None:
        self._store = store
        self._delivery = delivery
        self._max_metadata_bytes = max_metadata_bytes

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
            updated = await self._store.save(sid, username, metadata)
        except UsernameTaken:
            raise GatewayError(
                ErrorCode.DUPLICATE_USERNAME,
                f"Username {username!r} is already taken",
                reply=_data_set_failure(USERNAME_TAKEN),
            ) from None
        if updated.username != current.username:
            log.info("username claimed: %s", updated.username)
        await self._announce_follows(current, updated)
        return Reply(
            Outbound.DATA_SET,
            {"success": True, "updatedFields": updated_fields, "timestamp": iso_timestamp()},
        )

    async def clients(self) -> Reply:
        entries: list[ClientEntry] = [
            {
                "id": p.sid,
                "username": p.username,
                "connectTime": p.connect_time,
                "following": p.following,
                "profile": p.profile,
            }
            for p in await self._store.clients()
        ]
        return Reply(
            Outbound.CLIENTS,
            {"clients": entries, "count": len(entries), "timestamp": iso_timestamp()},
        )

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
            target = await self._store.sid_of(name)
            if target is None:
                continue
            payload = payload or {"username": after.username, "timestamp": iso_timestamp()}
            await self._delivery.send(target, Outbound.FOLLOWED, payload)

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
