"""What each API method does, on the presence store and the delivery port: no HTTP, no sockets.

A call is first *prepared* (the body validated against the method's model, the contract's size
rules applied) and then *run*. The two are apart so that the HTTP layer can refuse a bad call
before it spends anything on it (an idempotency record, rate-limit tokens for a batch).

Events carry the contract's shapes with :attr:`ApiService.sender` as ``sender``; server fields
(``sender``, ``timestamp``, ``broadcast``) are written after the caller's, so they always win.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, cast

from pydantic import BaseModel, ValidationError

from ..observability.logs import printable
from ..pipeline.validation import describe
from ..protocol.close import CloseReason
from ..protocol.codec import encoded_size
from ..protocol.events import Outbound
from ..protocol.inbound import Limits
from ..protocol.outbound import stamped
from ..protocol.timestamps import iso_timestamp
from ..services.ports import Delivery, Outcome
from ..store.base import Address, PresenceStore, StoreUnavailable
from ..transport.sio_codec import depth
from .models import (
    PARAMS,
    ApiCode,
    ApiFailure,
    BatchFailed,
    BatchOk,
    BatchParams,
    BatchResult,
    BroadcastParams,
    BroadcastResult,
    DirectParams,
    DirectResult,
    DisconnectParams,
    DisconnectResult,
    NotifyParams,
    NotifyResult,
    PresenceParams,
    PresenceResult,
    Result,
    ServerSender,
    StatsParams,
    StatsResult,
)

log = logging.getLogger("wshub.api")


@dataclass(frozen=True, slots=True)
class Call:
    method: str
    params: BaseModel

    @property
    def cost(self) -> int:
        """Rate-limit tokens: one per call, so a batch is no way around the limit."""
        return len(self.params.calls) if isinstance(self.params, BatchParams) else 1


class ApiService:
    def __init__(
        self,
        store: PresenceStore,
        delivery: Delivery,
        *,
        limits: Limits,
        max_message_bytes: int,
        max_notification_bytes: int,
        max_depth: int,
        sender_name: str,
    ) -> None:
        self._store = store
        self._delivery = delivery
        self._limits = limits
        self._max_message_bytes = max_message_bytes
        self._max_notification_bytes = max_notification_bytes
        self._max_depth = max_depth
        self.sender: ServerSender = {
            "id": None,
            "username": sender_name,
            "profile": {},
            "system": True,
        }

    # -- preparing ------------------------------------------------------------------------

    def prepare(self, method: str, body: Any) -> Call:
        """Validate *body* for *method* (one of :data:`PARAMS`). Raises :class:`ApiFailure`."""
        if not isinstance(body, dict):
            raise ApiFailure(
                422, ApiCode.INVALID_FORMAT, f"{method}: the body must be a JSON object"
            )
        # A batch nests its calls' bodies three levels down.
        allowed = self._max_depth + (3 if method == "batch" else 0)
        if depth(body) > allowed:
            raise ApiFailure(
                422,
                ApiCode.INVALID_FORMAT,
                f"{method}: the body nests deeper than {allowed} levels (max_payload_depth)",
            )
        try:
            params = PARAMS[method].model_validate(body, context=self._limits)
        except ValidationError as exc:
            raise ApiFailure(422, ApiCode.INVALID_FORMAT, describe(method, exc)) from None
        if isinstance(params, NotifyParams | DirectParams | BroadcastParams):
            self._check_size(method, body, params)
        return Call(method, params)

    def _check_size(self, method: str, body: dict[str, Any], params: BaseModel) -> None:
        # The contract's rules for the same event sent by a client.
        size = encoded_size(body)
        if size > self._max_message_bytes:
            raise ApiFailure(
                413,
                ApiCode.PAYLOAD_TOO_LARGE,
                f"{method} takes {size} bytes; the limit (max_message_bytes) is "
                f"{self._max_message_bytes}",
            )
        if isinstance(params, NotifyParams):
            size = encoded_size(params.content)
            if size > self._max_notification_bytes:
                raise ApiFailure(
                    413,
                    ApiCode.PAYLOAD_TOO_LARGE,
                    f"Notification content takes {size} bytes; the limit "
                    f"(max_notification_bytes) is {self._max_notification_bytes}",
                )

    # -- running ----------------------------------------------------------------------------

    async def run(self, call: Call) -> Result | BatchResult:
        """Raises :class:`ApiFailure`: TARGET_NOT_FOUND, or UNAVAILABLE when Redis cannot be
        reached (then nothing was delivered, and a retry is safe)."""
        params = call.params
        try:
            match params:
                case NotifyParams():
                    return await self.notify(params)
                case DirectParams():
                    return await self.direct(params)
                case BroadcastParams():
                    return await self.broadcast(params)
                case DisconnectParams():
                    return await self.disconnect(params)
                case PresenceParams():
                    return await self.presence(params)
                case StatsParams():
                    return await self.stats()
                case BatchParams():
                    return await self.batch(params)
        except StoreUnavailable as exc:
            log.warning("api %s failed: presence store unavailable: %s", call.method, exc)
            raise ApiFailure(
                503,
                ApiCode.UNAVAILABLE,
                "Not delivered: the service is briefly unavailable; retry",
                headers={"Retry-After": "1"},
            ) from None
        raise AssertionError(f"no handler for {type(params).__name__}")

    async def notify(self, params: NotifyParams) -> NotifyResult:
        not_connected: list[str] = []
        if params.to is not None:
            connections: list[Address] = []
            reached = 0
            for name in params.to:
                found = await self._store.connections_of(name)
                if found:
                    reached += 1
                    connections.extend(found)
                else:
                    not_connected.append(name)
        else:
            assert params.followers_of is not None  # one of the two, by validation
            connections = list(await self._store.followers_of(params.followers_of))
            reached = len(connections)
        timestamp = iso_timestamp()
        outcome = Outcome()
        if connections:
            outcome = await self._delivery.send(
                connections,
                Outbound.NOTIFICATION,
                stamped(
                    params.model_dump(by_alias=True, exclude={"to", "followers_of"}),
                    sender=self.sender,
                    type=params.type,
                    content=params.content,
                    timestamp=timestamp,
                ),
            )
        return NotifyResult(
            recipients=reached,
            connections=len(connections),
            delivered=outcome.delivered,
            held=outcome.held,
            failed=outcome.failed,
            not_connected=not_connected,
            timestamp=timestamp,
        )

    async def direct(self, params: DirectParams) -> DirectResult:
        connections = await self._store.connections_of(params.target)
        if not connections:
            raise ApiFailure(
                404, ApiCode.TARGET_NOT_FOUND, f"User {params.target!r} is not connected"
            )
        timestamp = iso_timestamp()
        outcome = await self._delivery.send(
            connections,
            Outbound.DIRECT,
            stamped(
                params.model_dump(by_alias=True),
                sender=self.sender,
                type=params.type,
                timestamp=timestamp,
            ),
        )
        return DirectResult(
            connections=len(connections),
            delivered=outcome.delivered,
            held=outcome.held,
            failed=outcome.failed,
            timestamp=timestamp,
        )

    async def broadcast(self, params: BroadcastParams) -> BroadcastResult:
        counts = await self._store.counts()
        timestamp = iso_timestamp()
        await self._delivery.broadcast(
            Outbound.GENERAL,
            stamped(
                params.model_dump(by_alias=True),
                sender=self.sender,
                type=params.type,
                timestamp=timestamp,
                broadcast=True,
            ),
        )
        return BroadcastResult(connections=counts.active, timestamp=timestamp)

    async def disconnect(self, params: DisconnectParams) -> DisconnectResult:
        connections = await self._store.connections_of(params.username)
        ended = 0
        for address in connections:
            if await self._delivery.close(
                address, CloseReason.BACKEND, params.message, reconnect=params.reconnect
            ):
                ended += 1
        log.info(
            "api disconnect of %s: %d of %d connection(s) ended",
            printable(params.username),
            ended,
            len(connections),
        )
        return DisconnectResult(
            connections=len(connections), ended=ended, failed=len(connections) - ended
        )

    async def presence(self, params: PresenceParams) -> PresenceResult:
        connections = await self._store.connections_of(params.username)
        away = sum(1 for address in connections if address.away)
        return PresenceResult(
            username=params.username,
            online=len(connections) > away,
            connections=len(connections),
            away=away,
        )

    async def stats(self) -> StatsResult:
        counts = await self._store.counts()
        return StatsResult(active_connections=counts.active, total_connections=counts.total)

    async def batch(self, params: BatchParams) -> BatchResult:
        """Each call in order; one that fails gets its error and the next one runs."""
        results: list[BatchOk | BatchFailed] = []
        for item in params.calls:
            try:
                call = self.prepare(item.method, item.params)
                result = cast(Result, await self.run(call))
            except ApiFailure as failure:
                results.append(BatchFailed(ok=False, error=failure.error))
            else:
                results.append(BatchOk(ok=True, result=result))
        return BatchResult(results=results)
