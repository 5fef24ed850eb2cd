"""``system:notification``: to named targets, or to the sender's connected followers."""

from __future__ import annotations

from ..protocol.codec import encoded_size
from ..protocol.errors import ErrorCode, GatewayError, Reply
from ..protocol.events import Outbound
from ..protocol.inbound import Notification
from ..protocol.outbound import stamped
from ..protocol.timestamps import iso_timestamp
from ..store.base import PresenceStore
from .identity import identified, sender_of
from .ports import Delivery, Outcome


class NotificationService:
    def __init__(self, store: PresenceStore, delivery: Delivery, *, max_content_bytes: int) -> None:
        self._store = store
        self._delivery = delivery
        self._max_content_bytes = max_content_bytes

    async def notify(self, sid: str, message: Notification) -> Reply:
        sender = await identified(self._store, sid, "send notifications")
        size = encoded_size(message.content)
        if size > self._max_content_bytes:
            raise GatewayError(
                ErrorCode.PAYLOAD_TOO_LARGE,
                f"Notification content takes {size} bytes; the limit "
                f"(max_notification_bytes) is {self._max_content_bytes}",
            )
        assert sender.username is not None  # identified() guarantees it
        if message.targets is None:
            recipients = list(await self._store.followers_of(sender.username))
        else:
            recipients = [
                address
                for name in message.targets
                for address in await self._store.connections_of(name)
            ]
        timestamp = iso_timestamp()
        outcome = Outcome()
        if recipients:
            outcome = await self._delivery.send(
                recipients,
                Outbound.NOTIFICATION,
                stamped(
                    message.model_dump(exclude={"targets"}),
                    sender=sender_of(sender),
                    type=message.type,
                    content=message.content,
                    timestamp=timestamp,
                ),
            )
        return Reply(
            Outbound.NOTIFICATION_SENT,
            {
                "success": True,
                "recipientCount": outcome.reached,
                "held": outcome.held,  # beyond the contract: kept for sessions that are away
                "timestamp": timestamp,
            },
        )
