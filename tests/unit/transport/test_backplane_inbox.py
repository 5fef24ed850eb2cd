"""What a node's backplane hands its inbox, against the real Redis on 127.0.0.1:6379 with a
recording inbox (no gateway): each channel's frames in the order they were published, a
broadcast's slow fan-out holding back what came after it on its channel and nothing else,
nothing lost when a backlog pauses a subscription, a frame that cannot be read dropped without
deafening the node."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any
from uuid import uuid4

import pytest

from gateway.store.redis_topology import parse
from gateway.store.resp_link import Endpoint, Link, pack
from gateway.transport import backplane as backplane_module
from gateway.transport.backplane import Backplane
from tests.support.wait import wait_until


class Recorder:
    """An inbox that writes down what it is handed; broadcasts wait for ``release``."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []
        self.release = asyncio.Event()
        self.release.set()

    def deliver(self, event: str, sids: list[str], packet: str) -> None:
        self.seen.append(("deliver", packet))

    async def broadcast_in(self, event: str, packet: str) -> None:
        await self.release.wait()
        self.seen.append(("broadcast", packet))

    async def request(self, body: dict[str, Any]) -> dict[str, Any]:
        return {}

    async def control(self, body: dict[str, Any]) -> None:
        self.seen.append(("control", str(body)))

    def routes(self, names: list[str] | None) -> None:
        if names is not None:  # (None: every (re)subscription of the broadcast channel)
            self.seen.append(("routes", str(names)))


@pytest.fixture
async def node() -> AsyncIterator[tuple[Backplane, Recorder]]:
    inbox = Recorder()
    made = Backplane(
        parse("redis://127.0.0.1:6379/0"),
        inbox,
        node_id="n1",
        prefix=f"wshub-test:{uuid4().hex}:",
        probe_timeout=2,
        on_routes=inbox.routes,
    )
    await made.start()
    yield made, inbox
    await made.stop()


async def publish(channel: str, *frames: bytes) -> None:
    """As another node would (origin ``n0``)."""
    link = await Link.open(Endpoint("127.0.0.1", 6379), timeout=5)
    try:
        for frame in frames:
            assert await link.call(pack(b"PUBLISH", channel.encode(), frame)) == 1
    finally:
        link.close()


async def until(inbox: Recorder, count: int) -> None:
    async def enough() -> bool:
        return len(inbox.seen) >= count

    await wait_until(enough, timeout=5, step=0.01)


def deliveries(*texts: str) -> list[bytes]:
    return [b"Dn0\nsystem:direct\nsid1\n" + text.encode() for text in texts]


def broadcasts(*texts: str) -> list[bytes]:
    return [b"Bn0\nsystem:general\n" + text.encode() for text in texts]


async def test_a_slow_broadcast_holds_back_its_own_channel_only(
    node: tuple[Backplane, Recorder],
) -> None:
    backplane, inbox = node
    inbox.release.clear()
    await publish(backplane.broadcast_channel, *broadcasts("b1"))
    await publish(backplane.broadcast_channel, b'Rn0\n["bob"]', *broadcasts("b2"))
    await publish(backplane.own_channel, *deliveries("d1"))
    await until(inbox, 1)
    await asyncio.sleep(0.1)
    # d1 came on the node's own channel: not held up by b1's fan-out. The route announcement
    # and b2 came after b1 on its channel: they wait for it.
    assert inbox.seen == [("deliver", "d1")]
    inbox.release.set()
    await until(inbox, 4)
    assert inbox.seen == [
        ("deliver", "d1"),
        ("broadcast", "b1"),
        ("routes", "['bob']"),
        ("broadcast", "b2"),
    ]
    await publish(backplane.broadcast_channel, *broadcasts("b3"))  # no backlog now
    await until(inbox, 5)
    assert inbox.seen[-1] == ("broadcast", "b3")


async def test_a_full_backlog_pauses_its_subscription_the_probe_leaves_it_and_nothing_is_lost(
    node: tuple[Backplane, Recorder], monkeypatch: pytest.MonkeyPatch
) -> None:
    backplane, inbox = node
    monkeypatch.setattr(backplane_module, "_BACKLOG_HIGH", 20)
    monkeypatch.setattr(backplane_module, "_BACKLOG_LOW", 5)
    inflow = backplane._inflows[backplane.broadcast_channel]
    listener = backplane._listeners[backplane.broadcast_channel]
    inbox.release.clear()
    texts = [f"b{n}" for n in range(200)]
    await publish(backplane.broadcast_channel, *broadcasts(*texts))
    await asyncio.sleep(0.2)
    # Reading stopped at the high mark (Redis keeps the rest), and only b0 was taken.
    assert len(inflow.backlog) == 20 and inflow.paused
    assert inbox.seen == []
    # Behind, not deaf: the probe neither fails the node nor restarts the subscription (which
    # would lose what Redis holds for it).
    assert await backplane.probe()
    assert backplane._listeners[backplane.broadcast_channel] is listener
    inbox.release.set()
    await until(inbox, 200)
    assert inbox.seen == [("broadcast", text) for text in texts]
    assert not inflow.paused and not inflow.backlog


async def test_a_frame_that_cannot_be_read_is_dropped_and_the_node_still_hears(
    node: tuple[Backplane, Recorder], caplog: pytest.LogCaptureFixture
) -> None:
    backplane, inbox = node
    await publish(backplane.own_channel, b"Cn0\n{not json", b'Cn0\n{"kind": "x"}')
    await until(inbox, 1)
    assert inbox.seen == [("control", "{'kind': 'x'}")]
    assert "backplane frame not understood: b'Cn0\\n{not json'" in caplog.text
    assert await backplane.probe()
