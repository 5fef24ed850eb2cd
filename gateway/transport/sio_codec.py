"""Socket.IO v5 packets, as text: a strict decoder for what clients send, encoders for ours.

The grammar (Socket.IO protocol v5, "Packet encoding")::

    <type>[<attachments>-][<namespace>,][<ack id>][<JSON payload>]

with type 0 CONNECT, 1 DISCONNECT, 2 EVENT, 3 ACK, 4 CONNECT_ERROR, 5 BINARY_EVENT, 6 BINARY_ACK;
the namespace is omitted for ``/``. The decoder is deliberately narrower than python-socketio's:
ASCII digits only, an ack id of at most 15 digits (JavaScript's safe integers), a payload of the
type the packet needs (an object or nothing for CONNECT, a non-empty array for EVENT), and JSON
no deeper than ``max_depth``, so that what a handler gets can always be encoded again. Anything
else is a :class:`PacketError`: a client mistake to answer, never an exception that escapes.

Binary packets are decoded only as far as their header: the gateway refuses them (the wire
contract is JSON) and needs the attachment count to skip the binary messages that follow.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import orjson

MAIN_NAMESPACE = "/"
_MAX_ID_DIGITS = 15


class PacketType(IntEnum):
    CONNECT = 0
    DISCONNECT = 1
    EVENT = 2
    ACK = 3
    CONNECT_ERROR = 4
    BINARY_EVENT = 5
    BINARY_ACK = 6


class PacketError(ValueError):
    """A packet that does not follow the protocol; the message says what is wrong."""


_MAX_ATTACHMENTS = 16


@dataclass(frozen=True, slots=True)
class Packet:
    type: PacketType
    namespace: str = MAIN_NAMESPACE
    id: int | None = None
    data: Any = None
    """CONNECT: the auth object or None; EVENT: ``[name, *args]``; ACK: ``[*args]``."""
    attachments: int = 0
    """BINARY_EVENT / BINARY_ACK: how many binary messages follow (their payload is not read)."""


def decode(text: str, *, max_depth: int) -> Packet:
    """Parse one Socket.IO packet (the payload of an Engine.IO MESSAGE)."""
    if not text or not "0" <= text[0] <= "6":
        raise PacketError("unknown packet type")
    kind = PacketType(ord(text[0]) - ord("0"))
    rest = text[1:]
    if kind in (PacketType.BINARY_EVENT, PacketType.BINARY_ACK):
        count, dash, rest = rest.partition("-")
        if not dash or not count.isascii() or not count.isdigit():
            raise PacketError("binary packet without an attachment count")
        if int(count) > _MAX_ATTACHMENTS:
            raise PacketError(f"more than {_MAX_ATTACHMENTS} binary attachments")
        return Packet(kind, attachments=int(count))
    namespace = MAIN_NAMESPACE
    if rest.startswith("/"):
        comma = rest.find(",")
        namespace, rest = (rest, "") if comma < 0 else (rest[:comma], rest[comma + 1 :])
        namespace = namespace.partition("?")[0]  # a query string on a namespace is legal
    digits = 0
    while digits < len(rest) and "0" <= rest[digits] <= "9":
        digits += 1
    if digits > _MAX_ID_DIGITS:
        raise PacketError("ack id too long")
    ack_id = int(rest[:digits]) if digits else None
    body = rest[digits:]
    data = _payload(body, max_depth) if body else None
    _check_shape(kind, ack_id, data)
    return Packet(kind, namespace, ack_id, data)


def _payload(body: str, max_depth: int) -> Any:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise PacketError("payload is not valid JSON") from None
    if depth(data) > max_depth:
        raise PacketError(f"payload nests deeper than {max_depth} levels")
    return data


def _check_shape(kind: PacketType, ack_id: int | None, data: Any) -> None:
    if kind is PacketType.CONNECT:
        if data is not None and not isinstance(data, dict):
            raise PacketError("CONNECT payload must be an object")
    elif kind is PacketType.EVENT:
        if not isinstance(data, list) or not data:
            raise PacketError("EVENT payload must be a non-empty array")
    elif kind is PacketType.ACK:
        if ack_id is None or not isinstance(data, list):
            raise PacketError("ACK needs an id and an array")
    elif kind is PacketType.DISCONNECT:
        if data is not None:
            raise PacketError("DISCONNECT takes no payload")
    elif kind is PacketType.CONNECT_ERROR:
        raise PacketError("CONNECT_ERROR is sent by servers only")


def depth(value: Any) -> int:
    """How deeply *value* nests (a scalar is 0), without recursion."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        level += 1
        deepest = max(deepest, level)
        stack.extend((child, level) for child in children)
    return deepest


# -- encoders: text for the main namespace, ready to be wrapped in an Engine.IO MESSAGE ------


def encode_event(event: str, *args: Any) -> str:
    return "2" + orjson.dumps([event, *args]).decode()


def encode_ack(ack_id: int, *args: Any) -> str:
    return f"3{ack_id}" + orjson.dumps(list(args)).decode()


def encode_connect(sid: str, pid: str | None = None) -> str:
    reply: dict[str, str] = {"sid": sid}
    if pid is not None:
        reply["pid"] = pid
    return "0" + orjson.dumps(reply).decode()


def encode_connect_error(namespace: str, message: str, data: Any = None) -> str:
    # {message, data}: what socket.io-client turns into connect_error's Error (message, data).
    error: dict[str, Any] = {"message": message}
    if data is not None:
        error["data"] = data
    prefix = "" if namespace == MAIN_NAMESPACE else namespace + ","
    return "4" + prefix + orjson.dumps(error).decode()


def encode_disconnect(namespace: str = MAIN_NAMESPACE) -> str:
    return "1" if namespace == MAIN_NAMESPACE else f"1{namespace},"
