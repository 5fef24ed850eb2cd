"""Broadcasts (``system:general``) and direct messages (``system:direct``)."""

from __future__ import annotations

from ..protocol.errors import ErrorCode, GatewayError, Reply
from ..protocol.events import Outbound
from ..protocol.inbound import Direct, General
from ..protocol.outbound import stamped
from ..protocol.timestamps import iso_timestamp
from ..store.base import PresenceStore
from .identity import identified, sender_of
from .ports import Delivery

USER_NOT_FOUND = "User not found"


class MessagingService:
    def __init__(self, store: PresenceStore, delivery: Delivery) -> None:
        self._store = store
        self._delivery = delivery

    async def general(self, sid: str, message: General) -> Reply:
        sender = await identified(self._store, sid, "broadcast")
        original = message.model_dump()
        timestamp = iso_timestamp()
        await self._delivery.broadcast(
            Outbound.GENERAL,
            stamped(
                original,
                sender=sender_of(sender),
                type=message.type,
                timestamp=timestamp,
                broadcast=True,
            ),
        )
        return Reply(
            Outbound.GENERAL_SENT,
            {"success": True, "originalMessage": original, "timestamp": timestamp},
        )

    async def direct(self, sid: str, message: Direct) -> Reply:
        sender = await identified(self._store, sid, "send a direct message")
        targets = await self._store.connections_of(message.target)
        timestamp = iso_timestamp()
        outcome = None
        if targets:
            outcome = await self._delivery.send(
                targets,
                Outbound.DIRECT,
                stamped(
                    message.model_dump(),
                    sender=sender_of(sender),
                    type=message.type,
                    timestamp=timestamp,
                ),
            )
        if outcome is None or not outcome.reached:
            # No connection holds the name, or none took the message (it just went).
            raise GatewayError(
                ErrorCode.TARGET_NOT_FOUND,
                f"User {message.target!r} is not connected",
                reply=Reply(
                    Outbound.DIRECT_SENT,
                    {
                        "success": False,
                        "target": message.target,
                        "reason": USER_NOT_FOUND,
                        "timestamp": timestamp,
                    },
                ),
            )
        return Reply(
            Outbound.DIRECT_SENT,
            {
                "success": True,
                "target": message.target,
                "timestamp": timestamp,
                # Beyond the contract: "delivered" to a connection, or "held" for a session that
                # is away and may resume (it gets the message then, or never).
                "delivery": "delivered" if outcome.delivered else "held",
            },
        )
