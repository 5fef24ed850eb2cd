"""The TCP connections a worker serves, by peer address, so a stalled one can be aborted.

An ASGI application never sees its TCP connection, and Hypercorn's writer waits on ``drain()``
without a timeout: a client that stops reading keeps its socket, its file descriptor and its
kernel send buffer for as long as it likes. The worker loop (``gateway.server.runner``) runs
Hypercorn's ``TCPServer`` itself and registers each connection's transport here under the
``(host, port)`` that ASGI scopes carry as ``client``; the transport layer aborts a connection
whose client does not leave within the close timeout.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Iterator
from contextlib import contextmanager, suppress

Peer = tuple[str, int]


class Peers:
    def __init__(self) -> None:
        self._transports: dict[Peer, asyncio.WriteTransport] = {}

    @contextmanager
    def serving(self, peer: Peer, transport: asyncio.WriteTransport) -> Iterator[None]:
        """Register *transport* for as long as the connection is served."""
        self._transports[peer] = transport
        try:
            yield
        finally:
            if self._transports.get(peer) is transport:
                del self._transports[peer]

    def abort(self, peer: Peer | None) -> bool:
        """Drop the connection at once (RST), unread data and all; False when it is gone."""
        transport = self._transports.pop(peer, None) if peer is not None else None
        if transport is None:
            return False
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # Without SO_LINGER 0 a close is a FIN: the kernel would go on delivering the send
            # buffer (megabytes, for minutes) to a client that does not read. With it, a RST.
            with suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
        return True

    def __len__(self) -> int:
        return len(self._transports)


def peer_of(scope: dict[str, object]) -> Peer | None:
    client = scope.get("client")
    if isinstance(client, list | tuple) and len(client) >= 2:
        return (str(client[0]), int(client[1]))
    return None
