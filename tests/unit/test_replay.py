"""The replay log of one session, with no clock and no I/O."""

from gateway.replay import Offsets, ReplayLog, without_offset
from gateway.transport.sio_codec import encode_event


def texts(entries: list | None) -> list[str] | None:
    return None if entries is None else [e.text for e in entries]


def test_replay_starts_after_the_clients_offset() -> None:
    log = ReplayLog(limit=10)
    for n in range(4):
        log.append(f"o{n}", f"t{n}")
    assert texts(log.after("o1")) == ["t2", "t3"]
    assert texts(log.after("o3")) == []
    # An offset the log does not know: the client had none of it (or only confirmed parts).
    assert texts(log.after(None)) == ["t0", "t1", "t2", "t3"]
    assert texts(log.after("from-somewhere-else")) == ["t0", "t1", "t2", "t3"]


def test_a_pong_confirms_what_was_sent_before_its_ping() -> None:
    log = ReplayLog(limit=10)
    log.append("o1", "t1")
    log.append("o2", "t2")
    mark = log.last_seq  # a PING goes out now
    log.append("o3", "t3")
    log.confirm(mark)  # its PONG
    assert len(log) == 1 and texts(log.after(None)) == ["t3"]
    assert texts(log.after("o2")) == ["t3"]  # trimmed offset: everything left is newer


def test_an_overflow_makes_an_unknown_offset_unrecoverable() -> None:
    log = ReplayLog(limit=2)
    for n in range(3):
        log.append(f"o{n}", f"t{n}")
    assert log.full and len(log) == 2
    assert texts(log.after("o1")) == ["t2"]  # a known offset still replays exactly
    assert log.after(None) is None  # t0 was dropped unread: cannot replay everything
    log.confirm(log.last_seq)  # the client read it all after all
    assert log.after(None) == []


def test_offsets_are_unique_and_strippable() -> None:
    offsets = Offsets("abc123")
    first, second = offsets.next(), offsets.next()
    assert (first, second) == ("abc123.1", "abc123.2")
    text = encode_event("system:direct", {"a": [1, ',"']}, first)
    assert text == '2["system:direct",{"a":[1,",\\""]},"abc123.1"]'
    assert without_offset(text, first) == encode_event("system:direct", {"a": [1, ',"']})
