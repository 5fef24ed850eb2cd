"""Every event name of the wire contract, in one place."""

from enum import StrEnum


class Inbound(StrEnum):
    """Events a client sends."""

    SET_DATA = "system:setData"
    CLIENTS = "system:clients"
    PING = "client-ping"
    GENERAL = "system:general"
    DIRECT = "system:direct"
    TYPING_START = "system:typingStart"
    TYPING_STOP = "system:typingStop"
    NOTIFICATION = "system:notification"
    HEARTBEAT_ACK = "system:heartbeat-ack"
    GET_CONFIG = "system:getConfig"


class Outbound(StrEnum):
    """Events the server sends."""

    WELCOME = "system:welcome"
    DATA_SET = "system:dataSet"
    FOLLOWED = "system:followed"
    CLIENTS = "system:clients"
    PONG = "client-pong"
    GENERAL = "system:general"
    GENERAL_SENT = "system:generalSent"
    DIRECT = "system:direct"
    DIRECT_SENT = "system:directSent"
    TYPING_UPDATE = "system:typingUpdate"
    NOTIFICATION = "system:notification"
    NOTIFICATION_SENT = "system:notificationSent"
    HEARTBEAT = "system:heartbeat"
    HEARTBEAT_WARNING = "system:heartbeat-warning"
    STATS = "system:stats"
    CONFIG = "system:config"
    CERTIFICATE_REFRESH = "system:certificateRefresh"
    ERROR = "system:error"
    DISCONNECT_NOTICE = "system:disconnect"
    """Sent just before a server-initiated close: {reason, message, reconnect, timestamp}."""
