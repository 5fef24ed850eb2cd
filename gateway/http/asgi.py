"""The one ASGI application of a worker: Engine.IO's path to the gate, the rest to Quart."""

from __future__ import annotations

from typing import Any

from .client_bundle import Receive, Scope, Send


class Dispatch:
    """``/socket.io/`` (HTTP and WebSocket) to *engineio*; everything else, lifespan included,
    to *http*."""

    # Any: ASGI servers and frameworks each type their scopes and events their own way.
    def __init__(self, engineio: Any, http: Any, *, path: str = "/socket.io/") -> None:
        self._engineio = engineio
        self._http = http
        self._path = path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and _under(scope.get("path", ""), self._path):
            await self._engineio(scope, receive, send)
        else:
            await self._http(scope, receive, send)


def _under(path: Any, prefix: str) -> bool:
    return isinstance(path, str) and (path + "/").startswith(prefix)
