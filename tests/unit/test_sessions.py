"""The lifecycle driver without sockets: fake transports, the memory store, a fake clock."""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass, field
from typing import Any

import pytest

from gateway.hub import Hub
from gateway.lifecycle import State
from gateway.observability.metrics import Metrics
from gateway.sessions import Client, Handed, Outgoing, Sessions
from gateway.settings import Settings
from gateway.store.base import StoreUnavailable
from gateway.store.memory import MemoryStore
from gateway.transport.admission import Admission, AdmissionPolicy, Ticket
from gateway.transport.engineio_seam import MessagePacket
from tests.unit.fakes import RecordingDelivery


@dataclass
class FakeLink:
    transport: str = "websocket"
    peer: tuple[str, int] | None = ("10.0.0.1", 40000)
    sent: list[str] = field(default_factory=list)
    finished: bool = False
    ended: bool | None = None  # None: not ended; else whether hard
    alive: bool = True

    def send(self, packet: MessagePacket) -> bool:
        self.sent.append(packet.encode()[1:])  # the Socket.IO text
        return True

    def finish(self) -> None:
        self.finished = True

    def drop_backlog(self) -> None:
        pass

    async def end(self, *, hard: bool) -> None:
        self.ended = hard

    async def probe(self, within: float) -> bool:
        return self.alive

    def events(self) -> list[str]:
        return [json.loads(t[1:])[0] for t in self.sent if t.startswith("2")]


class World:
    def __init__(self, store: MemoryStore | None = None, **settings: Any) -> None:
        self.now = 0.0
        self.store = store or MemoryStore()
        self.settings = Settings.load(**settings)
        self.hub = Hub(self.settings, self.store, RecordingDelivery())
        self.sessions = Sessions(self.settings, self.hub, Metrics(), clock=lambda: self.now)
        self.admission = Admission(AdmissionPolicy(100, 100, 1000, 1000), lambda: self.now)
        self._eio = 0

    def open(self, link: FakeLink | None = None) -> tuple[Client, FakeLink, Ticket]:
        link = link or FakeLink()
        ticket = self.admission.admit("10.0.0.1")
        assert isinstance(ticket, Ticket)
        self._eio += 1
        client = self.sessions.open(f"eio{self._eio}", link, ticket, {}, offsets=True)
        return client, link, ticket

    async def connected(self) -> tuple[Client, FakeLink, Ticket]:
        client, link, ticket = self.open()
        await self.sessions.connect(client, None)
        assert client.state is State.CONNECTED
        return client, link, ticket

    async def tick(self, to: float) -> None:
        """Let the deadlines due at *to* fire."""
        self.now = to
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.sessions.run(), 0.05)


async def test_a_connect_is_answered_with_sid_and_pid_then_welcomed() -> None:
    world = World()
    client, link, _ = world.open()
    assert client.state is State.PENDING and world.sessions.table.active == 0
    await world.sessions.connect(client, None)
    assert client.state is State.CONNECTED and world.sessions.table.active == 1
    connect = json.loads(link.sent[0][1:])
    assert connect == {"sid": client.sid, "pid": client.pid}
    assert client.pid is not None and client.pid.startswith(f"{client.sid}.")
    assert link.events() == ["system:welcome"]
    assert await world.store.get(client.sid or "") is not None


async def test_a_lost_transport_waits_then_resumes_on_a_new_one() -> None:
    world = World()
    session, old_link, old_ticket = await world.connected()
    await world.sessions.ended(session, "transport close")
    assert session.state is State.RECOVERING and world.sessions.table.active == 0
    assert old_ticket.released and old_link.ended is False
    held = world.sessions.deliver(
        session, Outgoing('2["system:direct",{"n":1},"aaaaaa.1"]', "aaaaaa.1")
    )
    assert held is Handed.HELD
    assert (await world.store.counts()).active == 0  # away: not counted

    new, link, ticket = world.open()
    await world.sessions.connect(new, {"pid": session.pid})
    assert new.state is State.CLOSED and not ticket.released  # its transport moved on
    assert session.state is State.CONNECTED and session.link is link
    assert link.sent[0] == '2["system:direct",{"n":1},"aaaaaa.1"]'  # the replay first,
    assert json.loads(link.sent[1][1:]) == {"sid": session.sid, "pid": session.pid}  # then CONNECT
    assert world.sessions.table.active == 1
    await world.sessions.client_disconnect(session)
    assert session.state is State.CLOSED and await world.store.get(session.sid or "") is None


async def test_a_wrong_pid_gets_a_fresh_session() -> None:
    world = World()
    session, _, _ = await world.connected()
    await world.sessions.ended(session, "ping timeout")
    new, _link, _ = world.open()
    await world.sessions.connect(new, {"pid": f"{session.sid}.guessed"})
    assert new.state is State.CONNECTED and new.sid != session.sid
    assert session.state is State.RECOVERING  # untouched


async def test_the_window_ends_a_waiting_session() -> None:
    world = World(recovery_window=10)
    session, _, _ = await world.connected()
    await world.sessions.ended(session, "transport error")
    await world.tick(9)
    assert session.state is State.RECOVERING
    await world.tick(10.5)
    assert session.state is State.CLOSED and await world.store.get(session.sid or "") is None


async def test_a_full_buffer_ends_a_waiting_session() -> None:
    world = World(recovery_buffer=2)
    session, _, _ = await world.connected()
    await world.sessions.ended(session, "transport close")
    results = [
        world.sessions.deliver(session, Outgoing(f'2["e",{n},"aaaaaa.{n}"]', f"aaaaaa.{n}"))
        for n in range(3)
    ]
    assert results == [Handed.HELD, Handed.HELD, Handed.REFUSED]
    await asyncio.sleep(0)  # the expiry runs on its own
    await asyncio.sleep(0)
    assert session.state is State.CLOSED


async def test_without_recovery_a_lost_transport_ends_the_session() -> None:
    world = World(recovery_window=0)
    session, link, _ = await world.connected()
    assert json.loads(link.sent[0][1:]) == {"sid": session.sid}  # no pid
    await world.sessions.ended(session, "transport close")
    assert session.state is State.CLOSED


async def test_a_client_disconnect_keeps_the_transport_for_a_new_session() -> None:
    world = World()
    session, link, ticket = await world.connected()
    eio = session.eio_sid
    await world.sessions.client_disconnect(session)
    assert session.state is State.CLOSED and not ticket.released
    successor = world.sessions.table.by_eio[eio or ""]
    assert isinstance(successor, Client) and successor.state is State.PENDING
    assert successor.link is link and link.ended is None
    await world.sessions.connect(successor, None)
    assert successor.sid != session.sid and successor.state is State.CONNECTED


class SlowStore(MemoryStore):
    """A store whose connect takes until the test lets it go."""

    def __init__(self) -> None:
        super().__init__()
        self.go = asyncio.Event()

    async def connect(self, sid: str, connect_time: str, *, pid_hash: str = "") -> None:
        await self.go.wait()
        await super().connect(sid, connect_time, pid_hash=pid_hash)


async def test_a_client_that_leaves_while_the_store_answers_leaves_nothing() -> None:
    store = SlowStore()
    world = World(store)
    client, _, ticket = world.open()
    connecting = asyncio.ensure_future(world.sessions.connect(client, None))
    await asyncio.sleep(0)
    assert client.state is State.CONNECTING
    await world.sessions.ended(client, "transport close")  # a polling client went away
    assert client.state is State.CLOSED and ticket.released
    store.go.set()
    await connecting
    assert await store.clients() == [] and (await store.counts()).active == 0


class DownStore(MemoryStore):
    async def connect(self, sid: str, connect_time: str, *, pid_hash: str = "") -> None:
        raise StoreUnavailable("redis is down")


async def test_a_store_outage_refuses_the_connect_and_frees_the_slot() -> None:
    world = World(DownStore())
    client, link, ticket = world.open()
    await world.sessions.connect(client, None)
    assert client.state is State.CLOSING and link.finished
    assert json.loads(link.sent[0][1:]) == {
        "message": "the service is briefly unavailable",
        "data": {"code": "UNAVAILABLE"},
    }
    await world.sessions.ended(client, "transport close")
    assert client.state is State.CLOSED and ticket.released


@pytest.mark.parametrize("reason", ["client disconnect", "transport close"])
async def test_every_resource_is_released_once(reason: str) -> None:
    world = World()
    session, _link, ticket = await world.connected()
    await world.sessions.ended(session, reason)
    if session.state is State.RECOVERING:
        await world.tick(world.settings.recovery_window + 1)
    assert session.state is State.CLOSED and session.held == set()
    assert ticket.released and world.admission.open == 0
    assert world.hub.heartbeat.book.missed(session.sid or "") is None


class FailingStore(MemoryStore):
    """Redis goes away between a connect and its end."""

    broken = False

    async def disconnect(self, sid: str) -> None:  # type: ignore[override]
        if self.broken:
            raise StoreUnavailable("redis is down")
        await super().disconnect(sid)

    async def connections_of(self, username: str) -> list[Any]:  # type: ignore[override]
        if self.broken:
            raise StoreUnavailable("redis is down")
        return list(await super().connections_of(username))


async def test_a_store_failing_at_the_end_still_frees_everything_else() -> None:
    store = FailingStore()
    world = World(store, recovery_window=0)
    session, link, ticket = await world.connected()
    other, _, _ = await world.connected()
    await store.save(session.sid or "", "alice", {})
    await store.save(other.sid or "", "bob", {})
    await world.hub.handle(
        session.sid or "", session, "system:typingStart", ({"target": "bob"},), 20
    )
    store.broken = True
    await world.sessions.ended(session, "transport close")
    assert session.state is State.CLOSED and session.held == set()
    assert ticket.released and link.ended is False
    assert world.hub.heartbeat.book.missed(session.sid or "") is None
