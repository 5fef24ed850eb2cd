"""permessage-deflate policy for Hypercorn's WebSocket handshakes.

Hypercorn 0.18 accepts permessage-deflate whenever a client offers it, with no setting, and
wsproto inflates each incoming chunk without a bound before Hypercorn's
``websocket_max_message_size`` is checked: a small compressed frame can inflate ~1000-fold.
Deflate also triples the memory of an idle connection (docs/performance.md), and
Node's Socket.IO declines it by default. So we decline it by default, and when it is switched
on we inflate with a ceiling: a message that would inflate past ``max_frame_bytes`` closes the
connection with 1009 (message too big) before the excess is ever allocated.

Hypercorn builds the extension list inside ``WebsocketHandshake.accept`` from the module-level
name ``PerMessageDeflate``; :func:`install` rebinds that name. It is process-wide, which fits:
one process serves one gateway.
"""

from __future__ import annotations

import zlib
from typing import Any

import hypercorn.protocol.ws_stream as ws_stream
from wsproto.extensions import PerMessageDeflate
from wsproto.frame_protocol import CloseReason


class BoundedDeflate(PerMessageDeflate):
    """permessage-deflate that refuses the offer, or inflates at most *max_size* per message."""

    allowed = False
    max_size = 1_048_576

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._inflated = 0

    def accept(self, offer: str) -> bool | str | None:
        if not self.allowed:
            return None
        return super().accept(offer)

    def frame_inbound_payload_data(self, proto: Any, data: bytes) -> bytes | CloseReason:
        if not self._inbound_compressed or not self._inbound_is_compressible:
            return super().frame_inbound_payload_data(proto, data)
        decompressor = self._decompressor
        assert decompressor is not None
        budget = self.max_size - self._inflated
        try:
            inflated = decompressor.decompress(bytes(data), budget + 1)
        except zlib.error:
            return CloseReason.INVALID_FRAME_PAYLOAD_DATA
        self._inflated += len(inflated)
        if self._inflated > self.max_size or decompressor.unconsumed_tail:
            return CloseReason.MESSAGE_TOO_BIG
        return inflated

    def frame_inbound_complete(self, proto: Any, fin: bool) -> bytes | CloseReason | None:
        if fin:
            self._inflated = 0
        return super().frame_inbound_complete(proto, fin)


def install(*, allow_deflate: bool, max_size: int) -> None:
    BoundedDeflate.allowed = allow_deflate
    BoundedDeflate.max_size = max_size
    vars(ws_stream)["PerMessageDeflate"] = BoundedDeflate
