"""Looking up the connection behind an event, as the wire shows it."""

from __future__ import annotations

from ..protocol.errors import ErrorCode, GatewayError
from ..protocol.outbound import Sender
from ..store.base import Presence, PresenceStore


def sender_of(presence: Presence) -> Sender:
    return {"id": presence.sid, "username": presence.username, "profile": presence.profile}


async def identified(store: PresenceStore, sid: str, action: str) -> Presence:
    """The caller's presence; it must have a username to *action*."""
    presence = await store.get(sid)
    if presence is None or presence.username is None:
        raise GatewayError(
            ErrorCode.NO_USERNAME, f"Set a username with system:setData before you {action}"
        )
    return presence
