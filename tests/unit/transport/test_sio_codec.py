"""The Socket.IO v5 packet codec: what decodes, what is refused and why, and the encoders."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.transport.sio_codec import (
    Packet,
    PacketError,
    PacketType,
    decode,
    depth,
    encode_ack,
    encode_connect,
    encode_connect_error,
    encode_disconnect,
    encode_event,
)
from tests.support import strategies

T = PacketType


@pytest.mark.parametrize(
    ("text", "packet"),
    [
        ("0", Packet(T.CONNECT)),
        ('0{"token":"x"}', Packet(T.CONNECT, data={"token": "x"})),
        ("0/chat,", Packet(T.CONNECT, "/chat")),
        ("0/chat", Packet(T.CONNECT, "/chat")),  # the namespace runs to the end of the text
        ('0/chat?x=1,{"a":1}', Packet(T.CONNECT, "/chat", data={"a": 1})),
        ("1", Packet(T.DISCONNECT)),
        ("1/chat,", Packet(T.DISCONNECT, "/chat")),
        ('2["hello"]', Packet(T.EVENT, data=["hello"])),
        ('2["hello",1,"2",{"3":[true]}]', Packet(T.EVENT, data=["hello", 1, "2", {"3": [True]}])),
        ('212["a"]', Packet(T.EVENT, id=12, data=["a"])),
        ('2/chat,7["a",null]', Packet(T.EVENT, "/chat", 7, ["a", None])),
        ("2[42]", Packet(T.EVENT, data=[42])),  # a name that is no string: the hub's to refuse
        ("3456[]", Packet(T.ACK, id=456, data=[])),
        ('3999999999999999[1,"2"]', Packet(T.ACK, id=999_999_999_999_999, data=[1, "2"])),
        ('51-["a",{"_placeholder":true,"num":0}]', Packet(T.BINARY_EVENT, attachments=1)),
        ("616-", Packet(T.BINARY_ACK, attachments=16)),
    ],
)
def test_what_decodes(text: str, packet: Packet) -> None:
    assert decode(text, max_depth=32) == packet


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "unknown packet type"),
        ("7", "unknown packet type"),
        ("x", "unknown packet type"),
        ("\u0663", "unknown packet type"),  # an Arabic-Indic digit is no packet type
        ("2", "EVENT payload must be a non-empty array"),
        ("2[]", "EVENT payload must be a non-empty array"),
        ("2{}", "EVENT payload must be a non-empty array"),
        ('2"hello"', "EVENT payload must be a non-empty array"),
        ('2abc["a"]', "payload is not valid JSON"),  # an invalid ack id is no id at all
        ('2["a"', "payload is not valid JSON"),
        ("2" + "1" * 16 + '["a"]', "ack id too long"),
        ("0[]", "CONNECT payload must be an object"),
        ('0"token"', "CONNECT payload must be an object"),
        ("1{}", "DISCONNECT takes no payload"),
        ("3[1]", "ACK needs an id and an array"),
        ("31{}", "ACK needs an id and an array"),
        ('4{"message":"x"}', "CONNECT_ERROR is sent by servers only"),
        ("4abc", "payload is not valid JSON"),
        ('5["a"]', "binary packet without an attachment count"),
        ('5x-["a"]', "binary packet without an attachment count"),
        ('5\u0661-["a"]', "binary packet without an attachment count"),  # a non-ASCII digit
        ('517-["a"]', "more than 16 binary attachments"),
    ],
)
def test_what_is_refused_and_why(text: str, problem: str) -> None:
    with pytest.raises(PacketError) as refused:
        decode(text, max_depth=32)
    assert str(refused.value) == problem


def nested(levels: int) -> str:
    return "[" * levels + "]" * levels


@pytest.mark.parametrize("max_depth", [2, 32, 200])
def test_the_depth_limit_is_exact(max_depth: int) -> None:
    # The EVENT array itself is one level.
    assert decode(f'2["a",{nested(max_depth - 1)}]', max_depth=max_depth).data[0] == "a"
    with pytest.raises(PacketError, match=rf"^payload nests deeper than {max_depth} levels$"):
        decode(f'2["a",{nested(max_depth)}]', max_depth=max_depth)


def test_json_deeper_than_the_parser_allows_is_invalid_json_not_a_crash() -> None:
    with pytest.raises(PacketError, match=r"^payload is not valid JSON$"):
        decode(f'2["a",{nested(100_000)}]', max_depth=32)


def test_depth_counts_containers_without_recursion() -> None:
    assert [depth(v) for v in (1, "x", None, [], {}, [[]], {"a": [1]}, [1, [2, [3]]])] == [
        0,
        0,
        0,
        1,
        1,
        2,
        2,
        3,
    ]
    deep: Any = []
    for _ in range(50_000):  # deeper than Python's recursion limit
        deep = [deep]
    assert depth(deep) == 50_001


def test_encoders() -> None:
    assert encode_event("system:error", {"code": "X"}) == '2["system:error",{"code":"X"}]'
    assert encode_event("ping") == '2["ping"]'
    assert encode_ack(7, {"a": 1}) == '37[{"a":1}]'
    assert encode_ack(7) == "37[]"
    assert encode_connect("abc") == '0{"sid":"abc"}'
    assert encode_connect("abc", "pid") == '0{"sid":"abc","pid":"pid"}'
    assert encode_connect_error("/", "nope") == '4{"message":"nope"}'
    assert (
        encode_connect_error("/", "nope", {"code": "UNAVAILABLE"})
        == '4{"message":"nope","data":{"code":"UNAVAILABLE"}}'
    )
    assert encode_connect_error("/random", "Invalid namespace") == (
        '4/random,{"message":"Invalid namespace"}'
    )
    assert encode_disconnect() == "1"
    assert encode_disconnect("/chat") == "1/chat,"


json_values = strategies.json_values(text=20, width=4, leaves=12)


@settings(max_examples=300)
@given(name=st.text(max_size=20), args=st.lists(json_values, max_size=3))
def test_what_the_server_encodes_decodes_to_the_same(name: str, args: list[Any]) -> None:
    packet = decode(encode_event(name, *args), max_depth=200)
    assert (packet.type, packet.namespace, packet.id, packet.data) == (
        T.EVENT,
        "/",
        None,
        [name, *args],
    )
    ack = decode(encode_ack(3, *args), max_depth=200)
    assert (ack.type, ack.id, ack.data) == (T.ACK, 3, args)


@settings(max_examples=1000)
@given(
    text=st.text(max_size=40)
    | st.builds(lambda d, rest: d + rest, st.sampled_from(list("0123456")), st.text(max_size=40))
)
def test_any_text_decodes_or_is_a_packet_error(text: str) -> None:
    try:
        packet = decode(text, max_depth=8)
    except PacketError:
        return
    # Whatever decodes has the shape its handler needs, and can be encoded again.
    assert packet.namespace.startswith("/")
    if packet.type is T.EVENT:
        assert isinstance(packet.data, list) and packet.data
    elif packet.type is T.CONNECT:
        assert packet.data is None or isinstance(packet.data, dict)
    elif packet.type is T.ACK:
        assert packet.id is not None and isinstance(packet.data, list)
    assert packet.type is not T.CONNECT_ERROR
    if packet.data is not None:
        assert depth(packet.data) <= 8
        orjson.dumps(packet.data)
