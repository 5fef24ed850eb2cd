"""The sockets a worker serves: Hypercorn's public binds, plus an optional internal ops bind.

The ops bind (``ops_bind``) carries ``/health``, ``/ready`` and ``/metrics`` so they need not
be public, and it stays open while a draining worker has already stopped accepting clients:
the orchestrator can still read ``/ready`` = 503 there.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

from hypercorn.config import Sockets

from ..settings import SettingsError
from .config import GatewayConfig


@dataclass
class Listeners:
    public: Sockets
    ops: list[socket.socket] = field(default_factory=list)

    @property
    def ops_port(self) -> int | None:
        return int(self.ops[0].getsockname()[1]) if self.ops else None


def create_listeners(config: GatewayConfig, ops_bind: str | None) -> Listeners:
    return Listeners(config.create_sockets(), [bind_tcp(ops_bind)] if ops_bind else [])


def bind_tcp(address: str) -> socket.socket:
    host, _, port = address.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    try:
        info = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)[0]
        sock = socket.socket(info[0], socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(info[4])
    except (OSError, ValueError) as exc:
        raise SettingsError(f"cannot bind ops_bind {address!r}: {exc}") from None
    sock.listen(128)
    sock.setblocking(False)
    sock.set_inheritable(True)
    return sock
