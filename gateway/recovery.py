"""Connection state recovery: sessions that outlive their transport.

A phone that changes networks loses its TCP connection without a FIN; the server learns it only
at the Engine.IO ping timeout. Meanwhile the client reconnects at once and, with the official JS
client (4.6+) or the Dart one (2.0.3+), presents its private session id ``pid`` and the offset of
the last event it got (see :mod:`gateway.replay` for the wire form). This module finds that
session and hands it the new transport:

* **here**: the session is waiting (``RECOVERING``), or still holds the old, half-open transport
  (``CONNECTED``: that transport is cut, unlike the reference server, whose two sockets then
  share one id, socket.io issue 4880); its id, username, metadata and rate buckets continue, its
  typing indicators were cleared, and the events after the client's offset are replayed;
* **on another node** (Redis): the store says which node holds the session; that node checks the
  ``pid``, moves the store entry here (one script), answers with the events to replay and, for a
  little while, forwards to this node what still arrives for the session there. If that node
  does not answer (it died), the client gets a fresh session.

A session waits at most ``recovery_window`` seconds, keeps its username, and collects what is sent
to it (``recovery_buffer`` events at most: one more, and it ends so that its client starts
afresh, which an app notices as ``recovered === false``). A claim of its name by another
connection ends it: without authentication names are unique, and a client that cannot recover
(Swift, Java) must get its name back at once.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from .lifecycle import Event, Resource, State
from .observability.metrics import Metrics
from .replay import Entry, Offsets, ReplayLog, without_offset
from .settings import Settings
from .store.base import Presence, PresenceStore, StoreUnavailable
from .transport import sio_codec

if TYPE_CHECKING:
    from .sessions import Client, Sessions

log = logging.getLogger("wshub.recovery")

# Clients whose handlers get every argument as one payload when there are several (the Dart
# client's ``data`` becomes a List, python-socketio calls a one-argument handler with two): they
# get no offsets unless the setting says "always".
_NO_OFFSETS = re.compile(r"^(Dart/|Python/|python-socketio)")
OFFSETS_QUERY = "wshub_offsets"
# How long a node forwards what still arrives for a session it handed to another node.
_FORWARD_SECONDS = 30.0
_FORWARDS_KEPT = 10_000


class Remote(Protocol):
    """Asking another node (the router, over the backplane)."""

    node_id: str

    async def ask(
        self, node: str, body: dict[str, Any], timeout: float
    ) -> dict[str, Any] | None: ...


def digest(pid: str) -> str:
    return hashlib.sha256(pid.encode()).hexdigest()


class Recovery:
    def __init__(
        self,
        settings: Settings,
        sessions: Sessions,
        store: PresenceStore,
        metrics: Metrics,
        *,
        clock: Callable[[], float],
    ) -> None:
        self.window = settings.recovery_window
        self.buffer = settings.recovery_buffer
        self.enabled = self.window > 0
        self._offsets_mode = settings.recovery_offsets
        self._sessions = sessions
        self._store = store
        self._metrics = metrics
        self._clock = clock
        self._answer_timeout = settings.backplane_probe_timeout + 1.0
        self._offsets = Offsets()
        self._forwards: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self.remote: Remote | None = None

    # -- what new connections get

    def wants_offsets(self, user_agent: str, query: str) -> bool:
        """Whether this connection's replayable events carry offsets (decided at handshake)."""
        if not self.enabled or self._offsets_mode == "never":
            return False
        if f"{OFFSETS_QUERY}=0" in query:
            return False
        if self._offsets_mode == "always" or f"{OFFSETS_QUERY}=1" in query:
            return True
        return not _NO_OFFSETS.match(user_agent)

    def private_id(self, sid: str) -> str:
        """``<sid>.<secret>``: the sid says where to look, the secret proves ownership."""
        return f"{sid}.{secrets.token_urlsafe(16)}"

    def offset(self) -> str | None:
        """An offset for a new replayable message (None with recovery off)."""
        return self._offsets.next() if self.enabled else None

    def keep(self, client: Client, offset: str, text: str) -> None:
        if client.log is None:
            client.log = ReplayLog(self.buffer)
        client.log.append(offset, text)

    # -- the transport went away

    async def away(self, client: Client) -> None:
        """*client* just entered RECOVERING: mark it away (messages to it are now held)."""
        if not self.enabled or client.pid is None:
            await self.expire(client, "off")
            return
        assert client.sid is not None
        try:
            if not await self._store.set_away(client.sid, True):
                await self.expire(client, "displaced")  # its name was taken meanwhile
        except StoreUnavailable:
            pass  # the store's own copy says away; it is written back when Redis returns

    async def expire(self, client: Client, why: str) -> None:
        if client.state is State.RECOVERING:
            if why != "off":
                self._metrics.sessions_expired.labels(why).inc()
            await client.fire(Event.EXPIRE)

    # -- a client presenting its pid

    async def resume(self, new: Client, pid: str, offset: str | None) -> bool:
        """Give *new*'s transport to the session *pid* names; False when it cannot be (then the
        caller gives the client a fresh session)."""
        sid = pid.partition(".")[0]
        old = self._sessions.table.by_sid.get(sid)
        if old is not None:
            return await self._resume_here(new, _as_client(old), pid, offset)
        try:
            record = await self._store.record(sid)
        except StoreUnavailable:
            return self._failed("unavailable")
        if record is None or record.node == self._store.node_id or self.remote is None:
            return self._failed("unknown")
        if not hmac.compare_digest(digest(pid), record.pid_hash):
            return self._failed("mismatch")
        return await self._resume_from(new, record.node, sid, pid, offset)

    async def _resume_here(self, new: Client, old: Client, pid: str, offset: str | None) -> bool:
        if old.pid is None or not hmac.compare_digest(old.pid, pid) or not _same_user(new, old):
            return self._failed("mismatch")
        if old.state is State.CONNECTED:
            # The client is back on a new transport: the old one is half-open, so cut it.
            old.abort_tcp = True
            await old.fire(Event.TRANSPORT_LOST)
        if old.state is not State.RECOVERING:
            return self._failed("unknown")
        entries = old.log.after(offset) if old.log is not None else []
        if entries is None:
            await self.expire(old, "overflow")
            return self._failed("overflowed")
        assert old.sid is not None
        try:
            still_ours = await self._store.set_away(old.sid, False)
        except StoreUnavailable:
            still_ours = True  # the store's copy is this node's: it is written back later
        if not still_ours:
            await self.expire(old, "displaced")
            return self._failed("displaced")
        await self._sessions.adopt_transport(old, new)
        self._replay(old, entries, keep=False)  # they are in its log already, unconfirmed
        self._sessions.welcome(old)
        self._metrics.recoveries.labels("local").inc()
        return True

    async def _resume_from(
        self, new: Client, node: str, sid: str, pid: str, offset: str | None
    ) -> bool:
        assert self.remote is not None
        table = self._sessions.table
        new.sid, new.pid, new.early = sid, pid, []
        table.by_sid[sid] = new  # what arrives for the session meanwhile waits in new.early
        body = {
            "kind": "handover",
            "sid": sid,
            "pid": pid,
            "offset": offset,
            "to": self.remote.node_id,
        }
        answer = await self.remote.ask(node, body, self._answer_timeout)
        if not answer or not answer.get("ok"):
            if table.by_sid.get(sid) is new:
                del table.by_sid[sid]
            new.sid = new.pid = new.early = None
            return self._failed(str(answer.get("why", "refused")) if answer else "node_gone")
        presence = Presence(
            sid, answer["connect_time"], answer["username"], answer["metadata"] or {}
        )
        self._store.adopt(presence, digest(pid))
        if not await self._sessions.held(new, Resource.PRESENCE):
            return True  # the client left meanwhile: the moved entry is removed again
        if not await self._sessions.watch_expiry(new):
            return True
        entries = [Entry(0, offset_of(text) or "", text) for text in answer["replay"]]
        early, new.early = new.early or [], None
        self._replay(new, entries, keep=True)
        await new.fire(Event.ACCEPT)
        for message in early:  # what arrived while the session moved here, after the replay
            self._sessions.deliver(new, message)
        self._sessions.welcome(new)
        self._metrics.recoveries.labels("remote").inc()
        return True

    def _replay(self, client: Client, entries: list[Entry], *, keep: bool) -> None:
        """The missed events, then the CONNECT reply with the same sid and pid: the reference
        server's order (the client holds the events and runs them before its ``connect``)."""
        assert client.sid is not None and client.pid is not None
        for entry in entries:
            text = entry.text if client.offsets else without_offset(entry.text, entry.offset)
            client.packet(text)
            if keep:  # until this transport proves their receipt
                self.keep(client, entry.offset, entry.text)
        client.packet(sio_codec.encode_connect(client.sid, client.pid))
        self._metrics.events_replayed.inc(len(entries))
        log.info("session resumed (%d events replayed)", len(entries))

    def _failed(self, why: str) -> bool:
        self._metrics.recovery_failures.labels(why).inc()
        log.info("resume refused (%s); a fresh session follows", why)
        return False

    # -- asked by another node

    async def hand_over(self, body: dict[str, Any]) -> dict[str, Any]:
        """A client of session ``sid`` is back on node ``to``: give the session to that node."""
        sid, pid, to = str(body.get("sid")), str(body.get("pid")), str(body.get("to"))
        offset = body.get("offset") if isinstance(body.get("offset"), str) else None
        found = self._sessions.table.by_sid.get(sid)
        client = _as_client(found) if found is not None else None
        if client is None or client.pid is None or not hmac.compare_digest(client.pid, pid):
            return {"ok": False, "why": "unknown"}
        if client.state is State.CONNECTED:
            client.abort_tcp = True  # half-open: its client is on the other node now
            await client.fire(Event.TRANSPORT_LOST)
        if client.state is not State.RECOVERING:
            return {"ok": False, "why": "unknown"}
        entries = client.log.after(offset) if client.log is not None else []
        if entries is None:
            await self.expire(client, "overflow")
            return {"ok": False, "why": "overflowed"}
        try:
            presence = await self._store.move(sid, to)
        except StoreUnavailable:
            return {"ok": False, "why": "unavailable"}
        if presence is None:
            await self.expire(client, "displaced")
            return {"ok": False, "why": "displaced"}
        client.give(Resource.PRESENCE)  # the entry lives on at *to*
        client.end_label = "moved"
        self._remember_forward(sid, to)
        await client.fire(Event.HAND_OVER)
        return {
            "ok": True,
            "connect_time": presence.connect_time,
            "username": presence.username,
            "metadata": dict(presence.metadata),
            "replay": [entry.text for entry in entries],
        }

    def forward(self, sid: str) -> str | None:
        """The node a recently handed-over session went to, for what still arrives here."""
        moved = self._forwards.get(sid)
        if moved is None:
            return None
        node, until = moved
        if until < self._clock():
            del self._forwards[sid]
            return None
        return node

    def _remember_forward(self, sid: str, node: str) -> None:
        now = self._clock()
        self._forwards[sid] = (node, now + _FORWARD_SECONDS)
        self._forwards.move_to_end(sid)
        while self._forwards and (
            len(self._forwards) > _FORWARDS_KEPT or next(iter(self._forwards.values()))[1] < now
        ):
            self._forwards.popitem(last=False)


def offset_of(text: str) -> str | None:
    """The offset a packet carries (its last argument), or None."""
    if not text.endswith('"]'):
        return None
    start = text.rfind(',"')
    candidate = text[start + 2 : -2] if start >= 0 else ""
    return candidate if _OFFSET.fullmatch(candidate) else None


_OFFSET = re.compile(r"[0-9a-f]{6}\.[0-9a-f]+")


def _same_user(new: Client, old: Client) -> bool:
    """With authentication, only the same user may resume a session."""
    if new.identity is None or old.identity is None:
        return new.identity is old.identity
    return new.identity.username == old.identity.username


def _as_client(connection: object) -> Client:
    from .sessions import Client

    assert isinstance(connection, Client)
    return connection
