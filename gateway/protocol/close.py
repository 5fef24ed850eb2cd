"""Why the server ends a connection, as ``system:disconnect`` {reason, message, reconnect}."""

from enum import StrEnum


class CloseReason(StrEnum):
    """Why the server closes a connection. Clients get it in ``system:disconnect`` just before.

    ``reconnect`` in :data:`RECONNECT_ADVICE` says whether reconnecting makes sense.
    """

    HEARTBEAT_TIMEOUT = "heartbeat_timeout"
    RATE_LIMIT = "rate_limit_abuse"
    SLOW_CONSUMER = "slow_consumer"
    TOKEN_EXPIRED = "token_expired"
    SHUTDOWN = "server_shutdown"
    SERVER_FULL = "server_full"


RECONNECT_ADVICE: dict[CloseReason, str] = {
    CloseReason.HEARTBEAT_TIMEOUT: "reconnect",
    CloseReason.RATE_LIMIT: "reconnect later, sending less",
    CloseReason.SLOW_CONSUMER: "reconnect; read your socket faster",
    CloseReason.TOKEN_EXPIRED: "reconnect with a fresh token",
    CloseReason.SHUTDOWN: "reconnect (to another instance)",
    CloseReason.SERVER_FULL: "retry later",
}
