"""The bounded permessage-deflate extension, fed frames directly (no socket)."""

import zlib
from types import SimpleNamespace

from wsproto.frame_protocol import CloseReason, Opcode, RsvBits

from gateway.server.websocket import BoundedDeflate


def compressed(data: bytes) -> bytes:
    compressor = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -15)
    return compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)[:-4]


def extension(max_size: int) -> BoundedDeflate:
    BoundedDeflate.allowed = True
    BoundedDeflate.max_size = max_size
    ext = BoundedDeflate()
    assert ext.accept("permessage-deflate") is not None
    return ext


def test_refuses_the_offer_unless_allowed() -> None:
    BoundedDeflate.allowed = False
    assert BoundedDeflate().accept("permessage-deflate") is None


def test_a_bomb_stops_at_the_ceiling() -> None:
    ext = extension(max_size=1000)
    proto = SimpleNamespace(client=False)
    bomb = compressed(b" " * 5_000_000)
    assert len(bomb) < 10_000
    ext.frame_inbound_header(proto, Opcode.TEXT, RsvBits(True, False, False), len(bomb))
    assert ext.frame_inbound_payload_data(proto, bomb) is CloseReason.MESSAGE_TOO_BIG


def test_messages_under_the_ceiling_inflate_and_the_budget_resets() -> None:
    ext = extension(max_size=1000)
    proto = SimpleNamespace(client=False)
    for _ in range(3):  # 3 x 800 bytes: each message has its own budget
        frame = compressed(b"a" * 800)
        ext.frame_inbound_header(proto, Opcode.TEXT, RsvBits(True, False, False), len(frame))
        out = ext.frame_inbound_payload_data(proto, frame)
        assert isinstance(out, bytes)
        tail = ext.frame_inbound_complete(proto, True)
        assert out + (tail if isinstance(tail, bytes) else b"") == b"a" * 800
