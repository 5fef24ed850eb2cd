"""The Redis backplane: python-socketio's Redis client manager, checked end to end.

python-socketio's Redis pub/sub listener has a history of dying silently (python-socketio
issue 1581: a server stayed "deaf" for a day while accepting connections), and its publisher
gives up on a failed publish with only a log line. This manager:

* probes itself: every ``probe_interval`` it publishes a message addressed to itself on the
  Socket.IO channel and expects its own listener to hear it within ``probe_timeout``;
  ``healthy`` (shown on ``/ready`` and in metrics) is the last probe's outcome, and a failed
  probe restarts the listener (fresh connection, fresh subscription);
* raises :class:`BackplaneUnavailable` when a publish fails, so the sender of a message that
  could not reach the other instances gets an error instead of silence.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlparse

import redis.asyncio as aioredis
import socketio

from ..store.base import StoreUnavailable
from ..store.redis import POOL_SIZE
from .manager import DirectEmitManager

log = logging.getLogger("wshub.backplane")

_PROBE = b"wshub-probe:"


class BackplaneUnavailable(StoreUnavailable):
    """A message could not be published to the other instances."""


class GatewayRedisManager(socketio.AsyncRedisManager, DirectEmitManager):  # type: ignore[misc]
    """Redis pub/sub across processes; local delivery without a task per recipient."""

    def __init__(self, url: str, *, channel: str, probe_timeout: float) -> None:
        super().__init__(url, channel=channel)
        self.probe_timeout = probe_timeout
        self.healthy = False
        self.connected: bool = False
        self._heard: dict[str, asyncio.Event] = {}

    def _redis_connect(self) -> None:
        if urlparse(self.redis_url).scheme.endswith("+sentinel"):
            super()._redis_connect()
            return
        # As in the presence store: a burst of publishes waits for a pooled connection instead
        # of failing with "Too many connections" (redis-py's default pool).
        pool = aioredis.BlockingConnectionPool.from_url(
            self.redis_url, max_connections=POOL_SIZE, timeout=self.probe_timeout * 2
        )
        self.redis = aioredis.Redis.from_pool(pool)
        self.pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        self.connected = True

    async def _listen(self) -> AsyncIterator[Any]:
        async for message in super()._listen():
            if isinstance(message, bytes) and message.startswith(_PROBE):
                heard = self._heard.get(message[len(_PROBE) :].decode())
                if heard is not None:
                    heard.set()
                continue
            yield message

    async def _publish(self, data: Any) -> Any:
        payload = self.json.dumps(data)
        for attempt in (1, 2):
            try:
                if not self.connected:
                    self._redis_connect()
                return await self.redis.publish(self.channel, payload)
            except Exception as exc:  # redis-py raises many kinds; all mean "not sent"
                self.connected = False
                if attempt == 2:
                    self.healthy = False
                    raise BackplaneUnavailable(f"cannot publish to Redis: {exc}") from exc
        return None

    async def probe(self) -> bool:
        """Publish to ourselves and wait to hear it; restart the listener when we do not."""
        nonce = f"{self.host_id}:{uuid.uuid4().hex}"
        heard = self._heard[nonce] = asyncio.Event()
        try:
            await self._subscribed()
            if not self.connected:
                self._redis_connect()
            await asyncio.wait_for(
                self.redis.publish(self.channel, _PROBE + nonce.encode()), self.probe_timeout
            )
            await asyncio.wait_for(heard.wait(), self.probe_timeout)
            ok = True
        except Exception as exc:  # timeout or Redis error: either way, not heard
            self.connected = False
            ok = False
            log.warning("backplane probe failed (%s); restarting the listener", exc or "timeout")
            await self._restart_listener()
        finally:
            del self._heard[nonce]
        if ok and not self.healthy:
            log.info("backplane healthy")
        self.healthy = ok
        return ok

    async def _subscribed(self) -> None:
        """Wait (up to the probe timeout) for the listener's subscription: a probe published
        before it is in place, right after start or a restart, would go unheard."""
        async with asyncio.timeout(self.probe_timeout):
            # redis-py exposes no event for it, only the flag.
            while not getattr(getattr(self, "pubsub", None), "subscribed", False):  # noqa: ASYNC110
                await asyncio.sleep(0.02)

    async def _restart_listener(self) -> None:
        thread = getattr(self, "thread", None)
        if thread is not None:
            thread.cancel()
        pubsub = getattr(self, "pubsub", None)
        if pubsub is not None:
            with contextlib.suppress(Exception):  # the connection may be long gone
                await pubsub.aclose()
        self.thread = self.server.start_background_task(self._thread)
