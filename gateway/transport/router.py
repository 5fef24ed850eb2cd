"""The delivery port: a message goes to its connections on this node directly, and to each other
node that holds some of them in one publish (``gateway.transport.backplane``).

A message is encoded once, into one Engine.IO packet that every local recipient's queue shares.
Remote nodes are served first: when none of them can be reached and nothing is local, the
sender is told "not delivered, retry" (``UNAVAILABLE``) and a retry cannot duplicate anything;
when some were reached, the outcome says how many, never "retry".
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..observability.metrics import Metrics
from ..pacing import paced
from ..protocol.close import CloseReason
from ..recovery import offset_of
from ..services.ports import Outcome
from ..sessions import Client, Handed, Outgoing, Sessions
from ..store.base import Address
from . import sio_codec
from .backplane import Backplane, BackplaneUnavailable

log = logging.getLogger("wshub.router")


class Router:
    """Made before the :class:`Sessions` it delivers to (the hub behind them needs a delivery
    port first); :meth:`attach` completes it."""

    _sessions: Sessions
    backplane: Backplane | None = None
    # Told the node that took no message (the presence store's route cache stops trusting it).
    _unreachable: Callable[[str], None] | None = None

    def __init__(self, metrics: Metrics, *, node_id: str, probe_timeout: float) -> None:
        self.node_id = node_id
        self._probe_timeout = probe_timeout
        # One labelled child per event name, looked up once: labels() is a lock and a dict walk.
        self._delivered = functools.lru_cache(maxsize=64)(metrics.delivered.labels)

    def attach(
        self,
        sessions: Sessions,
        backplane: Backplane | None = None,
        *,
        unreachable: Callable[[str], None] | None = None,
    ) -> None:
        self._sessions = sessions
        self._table = sessions.table
        self.backplane = backplane
        self._unreachable = unreachable

    # -- services.ports.Delivery

    async def send(self, to: Sequence[Address], event: str, payload: Mapping[str, Any]) -> Outcome:
        message = self._message(event, payload)
        delivered = held = failed = 0
        local: list[Address] = []
        remote: dict[str, list[Address]] = {}
        for address in to:
            if address.node == self.node_id:
                local.append(address)
            else:
                remote.setdefault(address.node, []).append(address)
        unreachable: BackplaneUnavailable | None = None
        for node, addresses in remote.items():
            try:
                taken = await self._remote(node, event, [a.sid for a in addresses], message.text)
            except BackplaneUnavailable as exc:
                unreachable, taken = exc, False
            if not taken:
                failed += len(addresses)
                if self._unreachable is not None:
                    self._unreachable(node)
                continue
            away = sum(1 for a in addresses if a.away)
            held += away
            delivered += len(addresses) - away
        if unreachable is not None and not local and not delivered and not held:
            raise unreachable  # nothing went anywhere: the sender may safely retry
        for address in local:
            handed = self._hand(address.sid, message)
            if handed is Handed.DELIVERED:
                delivered += 1
            elif handed is Handed.HELD:
                held += 1
            else:
                failed += 1
        if delivered:
            self._delivered(event).inc(delivered)
        return Outcome(delivered=delivered, held=held, failed=failed)

    async def reply(self, sid: str, event: str, payload: Mapping[str, Any]) -> None:
        client = self._table.by_sid.get(sid)
        if isinstance(client, Client):
            self._sessions.reply(client, event, payload)
            self._delivered(event).inc()

    async def notify(self, sids: Sequence[str], event: str, payload: Mapping[str, Any]) -> None:
        message = Outgoing(sio_codec.encode_event(event, payload), None)
        count = 0
        async for sid in paced(sids):
            if self._hand(sid, message) is Handed.DELIVERED:
                count += 1
        if count:
            self._delivered(event).inc(count)

    async def broadcast(
        self, event: str, payload: Mapping[str, Any], *, local_only: bool = False
    ) -> None:
        # Heartbeats, stats and certificate notices (local_only) are not replayed on recovery.
        message = Outgoing(sio_codec.encode_event(event, payload), None)
        if not local_only:
            message = self._message(event, payload)
            if self.backplane is not None:
                await self.backplane.broadcast(
                    event, message.text
                )  # first: a failure delivers nothing
        await self.fan_out(event, message)

    async def close(
        self,
        to: str | Address,
        reason: CloseReason,
        message: str,
        *,
        reconnect: bool | None = None,
    ) -> bool:
        """End a connection anywhere; False when its node could not be told (Redis down, or
        no node listening there)."""
        if isinstance(to, Address) and to.node != self.node_id:
            if self.backplane is None:
                return False
            body = {
                "kind": "close",
                "sid": to.sid,
                "reason": reason.value,
                "message": message,
                "reconnect": reconnect,
            }
            try:
                return await self.backplane.control(to.node, body) > 0
            except BackplaneUnavailable:
                return False
        sid = to.sid if isinstance(to, Address) else to
        client = self._table.by_sid.get(sid)
        if isinstance(client, Client):
            await self._sessions.close(client, reason, message, reconnect=reconnect)
        return True

    async def alive(self, address: Address) -> bool:
        if address.node == self.node_id:
            return await self._sessions.probe(address.sid, self._probe_timeout)
        if self.backplane is None:
            return False
        answer = await self.backplane.request(
            address.node, {"kind": "probe", "sid": address.sid}, self._probe_timeout + 1.0
        )
        return bool(answer and answer.get("alive"))

    # -- backplane.Inbox

    def deliver(self, event: str, sids: list[str], packet: str) -> None:
        message = Outgoing(packet, offset_of(packet))
        count = 0
        moved: dict[str, list[str]] = {}
        for sid in sids:
            handed = self._hand(sid, message)
            if handed is Handed.DELIVERED:
                count += 1
            elif handed is Handed.REFUSED and (node := self._sessions.recovery.forward(sid)):
                moved.setdefault(node, []).append(sid)  # it just resumed on another node
        if count:
            self._delivered(event).inc(count)
        for node, forwarded in moved.items():
            self._sessions.spawn(self._forward(node, event, forwarded, packet))

    async def broadcast_in(self, event: str, packet: str) -> None:
        await self.fan_out(event, Outgoing(packet, offset_of(packet)))

    async def request(self, body: dict[str, Any]) -> dict[str, Any]:
        kind = body.get("kind")
        if kind == "probe":
            return {"alive": await self._sessions.probe(str(body.get("sid")), self._probe_timeout)}
        if kind == "handover":
            return await self._sessions.recovery.hand_over(body)
        return {"error": f"unknown request {kind!r}"}

    # -- recovery.Remote

    async def ask(self, node: str, body: dict[str, Any], timeout: float) -> dict[str, Any] | None:
        if self.backplane is None:
            return None
        try:
            return await self.backplane.request(node, body, timeout)
        except BackplaneUnavailable:
            return None

    async def control(self, body: dict[str, Any]) -> None:
        if body.get("kind") == "close":
            try:
                reason = CloseReason(str(body.get("reason")))
            except ValueError:
                log.warning("close request with an unknown reason %r", body.get("reason"))
                return
            reconnect = body.get("reconnect")
            await self.close(
                str(body.get("sid")),
                reason,
                str(body.get("message", "")),
                reconnect=reconnect if isinstance(reconnect, bool) else None,
            )

    # -- internals

    async def fan_out(self, event: str, message: Outgoing) -> int:
        """*message* to every session of this node, paced (``gateway.pacing``); how many got it
        now."""
        deliver = self._sessions.deliver
        count = 0
        async for client in paced(list(self._table.by_sid.values())):
            if isinstance(client, Client) and deliver(client, message) is Handed.DELIVERED:
                count += 1
        if count:
            self._delivered(event).inc(count)
        return count

    def _message(self, event: str, payload: Mapping[str, Any]) -> Outgoing:
        """A replayable message: with an offset as its last argument when recovery is on."""
        offset = self._sessions.recovery.offset()
        if offset is None:
            return Outgoing(sio_codec.encode_event(event, payload), None)
        return Outgoing(sio_codec.encode_event(event, payload, offset), offset)

    def _hand(self, sid: str, message: Outgoing) -> Handed:
        client = self._table.by_sid.get(sid)
        if not isinstance(client, Client):
            return Handed.REFUSED
        return self._sessions.deliver(client, message)

    async def _remote(self, node: str, event: str, sids: list[str], text: str) -> bool:
        if self.backplane is None:
            return False
        return await self.backplane.deliver(node, event, sids, text) > 0

    async def _forward(self, node: str, event: str, sids: list[str], packet: str) -> None:
        try:
            await self._remote(node, event, sids, packet)
        except BackplaneUnavailable as exc:
            log.warning("could not forward to a resumed session's new node: %s", exc)
