"""The application core: the routing table and the pipeline behind every client event.

The lifecycle driver (:mod:`gateway.sessions`) calls :meth:`Hub.authenticate` while a client
connects and :meth:`Hub.handle` for each of its events; everything behind them is sockets-free
and runs in a unit test with a fake delivery port (``tests/unit/test_hub.py``).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from .auth.expiry import SessionExpiry
from .auth.tokens import AuthError, Identity, TokenVerifier, bearer_token
from .observability.logs import printable
from .observability.metrics import Metrics
from .pipeline.chain import build_chain
from .pipeline.context import Caller, EventContext, RateClass, Route
from .pipeline.permissions import Permissions
from .pipeline.ratelimit import RateLimit, RatePolicy
from .pipeline.size import SizeLimit
from .pipeline.validation import ValidateSchema
from .protocol.errors import INTERNAL_ERROR, UNAVAILABLE, ErrorCode, GatewayError, Reply
from .protocol.events import Inbound, Outbound
from .protocol.inbound import Limits
from .services.heartbeat import HeartbeatService
from .services.messaging import MessagingService
from .services.notifications import NotificationService
from .services.ports import Delivery
from .services.presence import ClientListing, PresenceService
from .services.stats import StatsService
from .services.system import SystemService
from .services.typing import TypingService
from .settings import Settings
from .store.base import Claim, PresenceStore, StoreUnavailable

log = logging.getLogger("wshub.hub")

__all__ = ["INTERNAL_ERROR", "UNAVAILABLE", "AuthError", "Hub"]


class Hub:
    def __init__(
        self,
        settings: Settings,
        store: PresenceStore,
        delivery: Delivery,
        *,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.store = store
        self.delivery = delivery
        self.metrics = metrics or Metrics()
        # Labelled children looked up once per label set (event names are bounded by routing).
        self._event_counter = functools.lru_cache(maxsize=512)(self.metrics.events.labels)
        self._latency = functools.lru_cache(maxsize=64)(self.metrics.latency.labels)
        self.presence = PresenceService(
            store,
            delivery,
            max_metadata_bytes=settings.max_metadata_bytes,
            listing=ClientListing(
                store,
                page_size=settings.clients_page_size,
                max_page_size=settings.clients_page_max,
                ttl=settings.clients_snapshot_ttl,
                clock=clock,
            ),
            claim=claim_policy(settings),
        )
        self.messaging = MessagingService(store, delivery)
        self.notifications = NotificationService(
            store, delivery, max_content_bytes=settings.max_notification_bytes
        )
        self.typing = TypingService(store, delivery, timeout=settings.typing_timeout, clock=clock)
        self.heartbeat = HeartbeatService(
            delivery,
            interval=settings.heartbeat_interval,
            timeout=settings.heartbeat_timeout,
            warn_after=settings.heartbeat_warn_after,
            max_missed=settings.heartbeat_max_missed,
            on_warnings=self.metrics.heartbeat_warnings.inc,
            on_timeouts=self.metrics.heartbeat_timeouts.inc,
        )
        self.stats = StatsService(store, delivery, interval=settings.stats_interval)
        self.system = SystemService(settings)
        self.verifier = TokenVerifier(settings) if settings.auth_enabled else None
        self.expiry = SessionExpiry(delivery, wall_clock)
        self.rate_limit = RateLimit(
            RatePolicy(
                rate=settings.rate_limit,
                burst=settings.rate_limit_burst,
                cheap_rate=settings.rate_limit_cheap,
                cheap_burst=settings.rate_limit_cheap_burst,
                listing_rate=settings.rate_limit_clients,
                listing_burst=settings.rate_limit_clients_burst,
                flood_after=settings.flood_disconnect_after,
            ),
            clock,
        )
        self.routes = self._routes()
        limits = Limits(
            max_username_length=settings.max_username_length,
            max_following=settings.max_following,
            max_targets=settings.max_targets,
        )
        # The order of DESIGN.md: size → rate → auth/permission → validation → handler.
        self._pipeline = build_chain(
            [
                SizeLimit(settings.max_message_bytes),
                self.rate_limit,
                Permissions(wall_clock),
                ValidateSchema(limits),
            ]
        )

    def authenticate(self, auth: Any, headers: Mapping[str, str]) -> Identity | None:
        """Who is connecting; None when authentication is off. Raises :class:`AuthError`."""
        if self.verifier is None:
            return None
        token = bearer_token(auth, headers)
        if token is None:
            raise AuthError("a token is required (auth: {token} or Authorization: Bearer)")
        return self.verifier.verify(token)

    def background_jobs(self) -> list[Callable[[], Any]]:
        """Process-wide loops: one task each, whatever the number of connections."""
        return [self.heartbeat.run, self.typing.run, self.stats.run, self.expiry.run]

    # -- events -----------------------------------------------------------------------------

    async def handle(
        self,
        sid: str,
        caller: Caller,
        event: Any,
        args: tuple[Any, ...],
        size: int,
        *,
        wants_ack: bool = False,
    ) -> Any:
        """Run one client event through the pipeline; returns the acknowledgement payload.

        The reply (or the failure reply and ``system:error``) goes to the client as events
        too, so clients that do not ask for acks see the same answers; a route marked
        ``single_reply`` (a page of the client list) answers once, through the ack when asked.
        """
        if isinstance(event, str):
            route = self.routes.get(event)
            ctx = EventContext(sid, caller, event, args, size, route)
        else:
            route = None
            ctx = EventContext(sid, caller, "", args, size, None, problem=_NOT_A_NAME)
        return await self._run(ctx, event if route is not None else "unknown", wants_ack)

    async def handle_malformed(self, sid: str, caller: Caller, problem: str, size: int) -> Any:
        """A packet that is not an event (malformed, binary): rate-limited, then refused."""
        ctx = EventContext(sid, caller, "", (), size, None, problem=problem)
        return await self._run(ctx, "malformed", False)

    async def _run(self, ctx: EventContext, label: str, wants_ack: bool) -> Any:
        started = time.perf_counter()
        try:
            reply = await self._pipeline(ctx)
        except GatewayError as err:
            self._count(label, err.code.value, started)
            return await self._reject(ctx, err)
        except StoreUnavailable as exc:
            self.metrics.store_errors.inc()
            self._count(label, UNAVAILABLE, started)
            log.warning("%s failed: presence store unavailable: %s", label, exc)
            failure = {
                "code": UNAVAILABLE,
                "message": "Not delivered: the service is briefly unavailable; retry",
            }
            await self._send_error(ctx.sid, failure)
            return failure
        except asyncio.CancelledError:
            raise
        except Exception:
            self._count(label, INTERNAL_ERROR, started)
            log.exception("event %s failed", label)
            failure = {"code": INTERNAL_ERROR, "message": f"{label} failed on the server"}
            await self._send_error(ctx.sid, failure)
            return failure
        self._count(label, "ok", started)
        if reply is None:
            return {"success": True}
        if not (wants_ack and ctx.route is not None and ctx.route.single_reply):
            await self.delivery.reply(ctx.sid, reply.event, reply.payload)
        return reply.payload

    async def _reject(self, ctx: EventContext, err: GatewayError) -> Any:
        name = ctx.route.event if ctx.route is not None else printable(ctx.event or "malformed")
        log.info("rejected %s: %s %s", name, err.code.value, printable(err.message, 200))
        if err.code is ErrorCode.RATE_LIMIT:
            self.metrics.rate_limited.inc()
        elif err.code is ErrorCode.PAYLOAD_TOO_LARGE:
            self.metrics.oversize.inc()
        if err.reply is not None:
            await self.delivery.reply(ctx.sid, err.reply.event, err.reply.payload)
        await self._send_error(ctx.sid, err.payload())
        if err.close is not None:
            await self.delivery.close(ctx.sid, err.close, err.message)
        return err.reply.payload if err.reply is not None else err.payload()

    async def _send_error(self, sid: str, payload: dict[str, Any]) -> None:
        self.metrics.errors.labels(payload["code"]).inc()
        await self.delivery.reply(sid, Outbound.ERROR, payload)

    def _count(self, event: str, outcome: str, started: float) -> None:
        self._event_counter(event, outcome).inc()
        self._latency(event).observe(time.perf_counter() - started)

    def _routes(self) -> dict[str, Route]:
        from .protocol.inbound import MODELS

        async def set_data(ctx: EventContext, message: Any) -> Reply:
            forced = ctx.identity.username if ctx.identity is not None else None
            return await self.presence.set_data(ctx.sid, message, forced_username=forced)

        async def clients(ctx: EventContext, message: Any) -> Reply:
            return await self.presence.clients(message)

        async def ping(ctx: EventContext, message: Any) -> Reply:
            return self.system.pong()

        async def general(ctx: EventContext, message: Any) -> Reply:
            return await self.messaging.general(ctx.sid, message)

        async def direct(ctx: EventContext, message: Any) -> Reply:
            return await self.messaging.direct(ctx.sid, message)

        async def typing_start(ctx: EventContext, message: Any) -> None:
            await self.typing.start(ctx.sid, message)

        async def typing_stop(ctx: EventContext, message: Any) -> None:
            await self.typing.stop(ctx.sid, message)

        async def notification(ctx: EventContext, message: Any) -> Reply:
            return await self.notifications.notify(ctx.sid, message)

        async def heartbeat_ack(ctx: EventContext, message: Any) -> None:
            self.heartbeat.ack(ctx.sid, message)

        async def get_config(ctx: EventContext, message: Any) -> Reply:
            return self.system.config()

        handlers = {
            Inbound.SET_DATA: set_data,
            Inbound.CLIENTS: clients,
            Inbound.PING: ping,
            Inbound.GENERAL: general,
            Inbound.DIRECT: direct,
            Inbound.TYPING_START: typing_start,
            Inbound.TYPING_STOP: typing_stop,
            Inbound.NOTIFICATION: notification,
            Inbound.HEARTBEAT_ACK: heartbeat_ack,
            Inbound.GET_CONFIG: get_config,
        }
        rate_classes = {
            Inbound.PING: RateClass.CHEAP,
            Inbound.HEARTBEAT_ACK: RateClass.EXEMPT,
            Inbound.CLIENTS: RateClass.LISTING,
        }
        roles = {
            Inbound.GENERAL: self.settings.auth_broadcast_role,
            Inbound.CLIENTS: self.settings.auth_clients_role,
        }
        return {
            event: Route(
                event,
                MODELS[event],
                handler,
                rate_class=rate_classes.get(event, RateClass.NORMAL),
                role=roles.get(event),
                single_reply=event == Inbound.CLIENTS,
            )
            for event, handler in handlers.items()
        }


_NOT_A_NAME = "An event name must be a string"


def claim_policy(settings: Settings) -> Claim:
    """How usernames are held: one connection each without authentication (the contract), as
    ``user_connections`` says for authenticated users."""
    if not settings.auth_enabled:
        return Claim.UNIQUE
    return {"multi": Claim.MULTI, "replace": Claim.REPLACE, "reject": Claim.UNIQUE}[
        settings.user_connections
    ]
