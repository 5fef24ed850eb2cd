"""Server payloads. Typed dicts rather than models: they are built on the hot path and sent as is.

Server-added fields are merged *after* the client's own fields, so a client can never forge
``sender``, ``timestamp`` or ``broadcast``.
"""

from __future__ import annotations

from typing import Any, TypedDict


class Sender(TypedDict):
    id: str
    username: str | None
    profile: dict[str, Any]


class ClientEntry(TypedDict):
    id: str
    username: str | None
    connectTime: str
    following: list[str]
    profile: dict[str, Any]


def stamped(fields: dict[str, Any], **server_fields: Any) -> dict[str, Any]:
    """Client fields first, server fields last: the server's always win."""
    return {**fields, **server_fields}
