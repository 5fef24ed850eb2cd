"""The delivery port: a message goes to its connections on this node directly, and to each other
node that holds some of them in one publish (``gateway.transport.backplane``).

A message is encoded once, into one Engine.IO packet that every local recipient's queue shares.
Remote nodes are served first: when none of them can be reached and nothing is local, the
sender is told "not delivered, retry" (``UNAVAILABLE``) and a retry cannot duplicate anything;
when some were reached, the outcome says how many, never "retry".
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from ..observability.metrics import Metrics
from ..protocol.close import CloseReason
from ..services.ports import Outcome
from ..sessions import Client, Sessions
from ..store.base import Address
from . import sio_codec
from .backplane import Backplane, BackplaneUnavailable
from .engineio_seam import MessagePacket

log = logging.getLogger("wshub.router")

# A broadcast yields to the event loop after this many local recipients, so that handing one
# message to a crowd never makes a single long step.
_FANOUT_CHUNK = 500


class Router:
    """Made before the :class:`Sessions` it delivers to (the hub behind them needs a delivery
    port first); :meth:`attach` completes it."""

    _sessions: Sessions
    backplane: Backplane | None = None

    def __init__(self, metrics: Metrics, *, node_id: str, probe_timeout: float) -> None:
        self.node_id = node_id
        self._probe_timeout = probe_timeout
        # One labelled child per event name, looked up once: labels() is a lock and a dict walk.
        self._delivered = functools.lru_cache(maxsize=64)(metrics.delivered.labels)

    def attach(self, sessions: Sessions, backplane: Backplane | None = None) -> None:
        self._sessions = sessions
        self._table = sessions.table
        self.backplane = backplane

    # -- services.ports.Delivery

    async def send(self, to: Sequence[Address], event: str, payload: Mapping[str, Any]) -> Outcome:
        text = sio_codec.encode_event(event, payload)
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
                taken = await self._remote(node, event, [a.sid for a in addresses], text)
            except BackplaneUnavailable as exc:
                unreachable, taken = exc, False
            if not taken:
                failed += len(addresses)
                continue
            away = sum(1 for a in addresses if a.away)
            held += away
            delivered += len(addresses) - away
        if unreachable is not None and not local and not delivered and not held:
            raise unreachable  # nothing went anywhere: the sender may safely retry
        packet = MessagePacket(text)
        for address in local:
            client = self._table.by_sid.get(address.sid)
            if isinstance(client, Client) and self._sessions.deliver(client, packet):
                delivered += 1
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

    async def broadcast(
        self, event: str, payload: Mapping[str, Any], *, local_only: bool = False
    ) -> None:
        text = sio_codec.encode_event(event, payload)
        if self.backplane is not None and not local_only:
            await self.backplane.broadcast(event, text)  # first: a failure delivers nothing
        await self.fan_out(event, text)

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
        shared = MessagePacket(packet)
        count = 0
        for sid in sids:
            client = self._table.by_sid.get(sid)
            if isinstance(client, Client) and self._sessions.deliver(client, shared):
                count += 1
        if count:
            self._delivered(event).inc(count)

    async def broadcast_in(self, event: str, packet: str) -> None:
        await self.fan_out(event, packet)

    async def request(self, body: dict[str, Any]) -> dict[str, Any]:
        if body.get("kind") == "probe":
            return {"alive": await self._sessions.probe(str(body.get("sid")), self._probe_timeout)}
        return {"error": f"unknown request {body.get('kind')!r}"}

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

    async def fan_out(self, event: str, text: str) -> int:
        """*text* to every session of this node, in chunks; how many took it."""
        packet = MessagePacket(text)
        deliver = self._sessions.deliver
        count = 0
        for n, client in enumerate(list(self._table.by_sid.values()), 1):
            if isinstance(client, Client) and deliver(client, packet):
                count += 1
            if n % _FANOUT_CHUNK == 0:
                await asyncio.sleep(0)
        if count:
            self._delivered(event).inc(count)
        return count

    async def _remote(self, node: str, event: str, sids: list[str], text: str) -> bool:
        if self.backplane is None:
            return False
        return await self.backplane.deliver(node, event, sids, text) > 0
