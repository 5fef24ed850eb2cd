"""Small answers: welcome, ``client-pong`` and ``system:config``."""

from __future__ import annotations

from typing import Any

from ..protocol.errors import Reply
from ..protocol.events import Outbound
from ..protocol.timestamps import iso_timestamp
from ..settings import Settings

WELCOME = "Welcome to WS-Hub"


class SystemService:
    def __init__(self, settings: Settings) -> None:
        # Durations go out in milliseconds, as JavaScript timers take them.
        self._config: dict[str, Any] = {
            "heartbeat": {
                "interval": round(settings.heartbeat_interval * 1000),
                "timeout": round(settings.heartbeat_timeout * 1000),
            },
            "security": {"maxMessageSize": settings.max_message_bytes},
            "notifications": {"maxContentSize": settings.max_notification_bytes},
            "appInfo": {
                "name": settings.app_name,
                "version": settings.app_version,
                "environment": settings.environment,
            },
        }

    def welcome(self) -> Reply:
        return Reply(Outbound.WELCOME, {"message": WELCOME, "timestamp": iso_timestamp()})

    def pong(self) -> Reply:
        return Reply(Outbound.PONG, {"timestamp": iso_timestamp()})

    def config(self) -> Reply:
        return Reply(Outbound.CONFIG, self._config)
