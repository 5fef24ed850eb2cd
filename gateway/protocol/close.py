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
    PROTOCOL_ERROR = "protocol_error"
    CONNECT_TIMEOUT = "connect_timeout"
    SESSION_REPLACED = "session_replaced"
    BACKEND = "backend_disconnect"
    """The app's backend ended the user's connections through the server API (gateway/api)."""


RECONNECT_ADVICE: dict[CloseReason, str] = {
    CloseReason.HEARTBEAT_TIMEOUT: "reconnect",
    CloseReason.RATE_LIMIT: "reconnect later, sending less",
    CloseReason.SLOW_CONSUMER: "reconnect; read your socket faster",
    CloseReason.TOKEN_EXPIRED: "reconnect with a fresh token",
    CloseReason.SHUTDOWN: "reconnect (to another instance)",
    CloseReason.PROTOCOL_ERROR: "fix the client; it sent what Socket.IO does not allow",
    CloseReason.CONNECT_TIMEOUT: "send CONNECT right after the handshake",
    CloseReason.SESSION_REPLACED: "do not reconnect: another connection took over",
    CloseReason.BACKEND: "do not reconnect: the app ended this session (see message)",
}

_RECONNECTING = frozenset(
    {
        CloseReason.HEARTBEAT_TIMEOUT,
        CloseReason.RATE_LIMIT,
        CloseReason.SLOW_CONSUMER,
        CloseReason.SHUTDOWN,
        CloseReason.CONNECT_TIMEOUT,
    }
)


def reconnects(reason: CloseReason) -> bool:
    """Whether the official clients should reconnect by themselves after this close.

    For these the server ends the transport without a Socket.IO DISCONNECT, which the clients
    treat as a lost connection (they reconnect, with their back-off); for the others it sends
    DISCONNECT first, after which they stay disconnected until the app decides.
    """
    return reason in _RECONNECTING
