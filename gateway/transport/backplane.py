"""The Redis backplane: each node hears its own channel and the broadcast channel, nothing else.

A message for connections of another node is one publish on that node's channel, carrying all
of that node's recipients; a broadcast is one publish on the broadcast channel, which every node
fans out to its own clients. No node decodes what is addressed to another. On a Redis Cluster
the channels are sharded (SPUBLISH / SSUBSCRIBE): each lives on the shard that owns its slot,
so the pub/sub load spreads with the number of shards. (python-socketio's Redis manager, which
this replaces, publishes everything on one channel that every node decodes.)

Frames are bytes, one line of header per field and the Socket.IO packet text last, so that a
node reads only what it needs::

    D<origin>\\n<event>\\n<sid>,<sid>,...\\n<packet>   deliver to these connections
    B<origin>\\n<event>\\n<packet>                     deliver to every connection but the origin's
    Q<origin>\\n<request id>\\n<JSON>                  a request to this node (answered with A)
    A<origin>\\n<request id>\\n<JSON>                  the answer
    C<origin>\\n<JSON>                                 a control message, no answer
    R<origin>\\n<JSON list of usernames, or null>      these routes changed (on the broadcast
                                                      channel; null: any of them)
    P<origin>\\n<nonce>                                the self-probe

Route announcements keep every node's cache of where usernames are
(``gateway.store.route_cache``) coherent: the names a node changes within one step of the
event loop go out in one frame, after Redis applied the changes; a name that could not be
announced is announced again until it is; and every (re)subscription of the broadcast channel
tells the cache to forget everything, since announcements made meanwhile were missed.

Pub/sub is at most once: a node that is not subscribed when a message is published never gets
it. ``PUBLISH`` says how many subscribers took a message, so a message to a node that is not
listening (dead and not yet reaped, or resubscribing after a slot move) raises
:class:`BackplaneUnavailable` like a Redis outage: it went nowhere, the sender is told, and a
retry cannot duplicate it.

The self-probe: every ``probe_interval`` the node publishes a nonce on its own channel and on the
broadcast channel and expects to hear both within ``probe_timeout``; ``healthy`` (on ``/ready``
and in metrics) is the last probe's outcome, and a subscription that did not hear its nonce is
restarted (the other one, still hearing, is left alone: a restart loses what arrives
meanwhile).

Publishes and subscriptions go over lean links of our own (``gateway.store.resp_link``: one
pipelined connection per Redis or shard for every publish, one per subscription, replies parsed
by hiredis, a subscription's messages handled in the event loop's read callback), not through
redis-py's client, which cost more per publish than the rest of a cross-node DM's way through
the sending node; redis-py only says where to connect (``redis_topology.Locator``). Each
subscription hands its frames over as they are read, in order (:class:`_Inflow`): a broadcast,
whose fan-out takes its time, holds what arrives after it *on the same channel* in a backlog
(the node's own channel never waits for the broadcast channel), and past ``_BACKLOG_HIGH``
waiting frames that subscription stops reading (Redis buffers, then applies its own limit for
slow subscribers) until it is down to ``_BACKLOG_LOW``. A subscription that is paused so is
behind, not deaf: the probe does not restart it (that would lose what Redis holds for it).

``wshub_backplane_frames_received{kind}`` counts the frames this node decoded: with targeted
routing a node sees the deliveries, requests and control messages addressed to it, every
broadcast, every route announcement and every node's probe, nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import orjson
from prometheus_client import CollectorRegistry, Counter
from redis.crc import key_slot

from ..store.base import StoreUnavailable
from ..store.redis_topology import Locator, RedisTarget, connect
from ..store.resp_link import Endpoint, Link, LinkDown, ReplyError, pack

log = logging.getLogger("wshub.backplane")

_RETRY_PAUSES = (0.1, 0.25, 0.5, 1.0, 2.0)
_KINDS = {
    b"D": "deliver",
    b"B": "broadcast",
    b"Q": "request",
    b"A": "answer",
    b"C": "control",
    b"R": "routes",
    b"P": "probe",
}
# Past this many names waiting to be announced, one "forget every route" is sent instead.
_ANNOUNCED_NAMES_MAX = 1_000
# Frames waiting behind a broadcast's fan-out on one channel: past HIGH its subscription pauses,
# until LOW.
_BACKLOG_HIGH = 10_000
_BACKLOG_LOW = 1_000
# Why a subscription's link was closed when its channel's slot moved to another shard.
_MOVED = "moved"


class BackplaneUnavailable(StoreUnavailable):
    """A message could not be published to the other nodes."""


class Inbox(Protocol):
    """What a node does with what other nodes send it."""

    def deliver(self, event: str, sids: list[str], packet: str) -> None: ...

    async def broadcast_in(self, event: str, packet: str) -> None: ...

    async def request(self, body: dict[str, Any]) -> dict[str, Any]: ...

    async def control(self, body: dict[str, Any]) -> None: ...


class Backplane:
    def __init__(
        self,
        target: RedisTarget,
        inbox: Inbox,
        *,
        node_id: str,
        prefix: str,
        probe_timeout: float,
        timeout: float = 5.0,
        registry: CollectorRegistry | None = None,
        on_routes: Callable[[list[str] | None], None] | None = None,
    ) -> None:
        """*registry* is where the frame counter is exposed (none: counted, not exposed);
        *on_routes* hears the route announcements of other nodes (None: forget every route)."""
        self.node_id = node_id
        self._origin = node_id.encode()
        self._inbox = inbox
        self._target = target
        self._prefix = prefix
        self._probe_timeout = probe_timeout
        self._timeout = timeout
        # redis-py, only to find where to connect (Sentinel's primary, a slot's shard).
        self._client = connect(target, timeout=timeout, pool_size=2, decode_responses=False)
        self._locator = Locator(self._client)
        self._publish_verb, self._subscribe_verb = (
            (b"SPUBLISH", b"SSUBSCRIBE") if target.sharded else (b"PUBLISH", b"SUBSCRIBE")
        )
        # Command links: opened (or opening) per address, and which one each slot's channels use
        # (slot 0 for every channel, except on a cluster).
        self._opened: dict[str, asyncio.Task[Link]] = {}
        self._link_of: dict[int, Link] = {}
        self.own_channel = self.channel_of(node_id)
        self.broadcast_channel = f"{prefix}ch:all"
        # Each subscription's frames (and its link, which waits for messages as long as it
        # takes: an idle channel is not an error; a dead one is found by the probe, which puts
        # traffic on both channels every interval).
        self._inflows = {
            channel: _Inflow(channel, self._handled)
            for channel in (self.own_channel, self.broadcast_channel)
        }
        self.healthy = False
        self.frames_received = Counter(
            "wshub_backplane_frames_received",
            "Backplane frames this node decoded, by kind (deliver, broadcast, request, answer, "
            "control, routes, probe)",
            ["kind"],
            registry=registry,
        )
        # One child per kind, looked up once: labels() is a lock and a dict walk per frame.
        self._frames = {code: self.frames_received.labels(kind) for code, kind in _KINDS.items()}
        self._listeners: dict[str, asyncio.Task[None]] = {}
        # Set while the channel's current listener is subscribed; each listener has its own,
        # so that one being cancelled cannot clear the flag of the one that replaced it.
        self._subscribed: dict[str, asyncio.Event] = {}
        self._heard: dict[bytes, asyncio.Event] = {}
        self._pending: dict[bytes, asyncio.Future[dict[str, Any]]] = {}
        self._work: set[asyncio.Task[Any]] = set()
        self._on_routes = on_routes
        self._unannounced: set[str] = set()
        self._unannounced_all = False
        self._announcer: asyncio.Task[None] | None = None
        self._stopped = False

    def channel_of(self, node: str) -> str:
        return f"{self._prefix}ch:node:{node}"

    # -- lifecycle

    async def start(self) -> None:
        """Subscribe, and wait (up to the probe timeout) until both subscriptions are in place.

        A subscription that takes longer does not fail the start (a loaded machine made a
        gateway exit at startup when its cluster subscription took over 0.5 s): the listeners
        keep trying, and the node stays unready (``healthy`` is False) until a probe hears
        both channels.
        """
        for channel in (self.own_channel, self.broadcast_channel):
            self._spawn_listener(channel)
        try:
            await self._wait_subscribed()
        except TimeoutError:
            log.warning(
                "backplane not subscribed within %.1f s; unready until a probe hears it",
                self._probe_timeout,
            )

    async def stop(self) -> None:
        if self._announcer is not None and not self._announcer.done():
            # The last changes (this node's own connections, removed as it closed) reach the
            # other nodes if they can; if not, their caches age them out.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._announcer), self._probe_timeout)
        self._stopped = True
        tasks = [*self._listeners.values(), *self._work, *self._opened.values()]
        tasks += [inflow.drainer for inflow in self._inflows.values() if inflow.drainer]
        if self._announcer is not None:
            tasks.append(self._announcer)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._listeners.clear()
        for opened in self._opened.values():
            if _usable(opened):
                opened.result().close()
        self._opened.clear()
        self._link_of.clear()
        await self._locator.aclose()
        await self._client.aclose()

    # -- sending

    async def deliver(self, node: str, event: str, sids: list[str], packet: str) -> int:
        """Hand *packet* to node *node* for *sids*; how many subscribers took it (at least one).

        Raises :class:`BackplaneUnavailable` when Redis cannot be reached and also when nobody
        listens on the node's channel: a node killed and not reaped yet, or one resubscribing
        after its channel's slot moved. Either way nothing was delivered, and the sender must
        hear it (not a success for a message that went nowhere).
        """
        frame = b"D%b\n%b\n%b\n%b" % (
            self._origin,
            event.encode(),
            ",".join(sids).encode(),
            packet.encode(),
        )
        channel = self.channel_of(node)
        taken = await self._publish(channel, frame)
        if not taken:
            raise BackplaneUnavailable(f"no node listens on {channel}")
        return taken

    async def broadcast(self, event: str, packet: str) -> int:
        frame = b"B%b\n%b\n%b" % (self._origin, event.encode(), packet.encode())
        return await self._publish(self.broadcast_channel, frame)

    async def control(self, node: str, body: dict[str, Any]) -> int:
        return await self._publish(
            self.channel_of(node), b"C%b\n%b" % (self._origin, orjson.dumps(body))
        )

    def announce_routes(self, names: list[str] | None) -> None:
        """Tell every other node that the routes of *names* (None: of any name) changed: in one
        frame with whatever else changed in this step of the event loop, retried until sent."""
        if self._stopped:
            return
        if names is None:
            self._unannounced_all = True
        else:
            self._unannounced.update(names)
        if len(self._unannounced) > _ANNOUNCED_NAMES_MAX:
            self._unannounced_all = True
        if self._unannounced_all:
            self._unannounced.clear()
        if self._announcer is None or self._announcer.done():
            self._announcer = asyncio.create_task(self._announce(), name="wshub:backplane:routes")

    async def request(
        self, node: str, body: dict[str, Any], timeout: float
    ) -> dict[str, Any] | None:
        """Ask node *node*; its answer, or None when none came within *timeout*."""
        rid = uuid.uuid4().hex[:16].encode()
        answer: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[rid] = answer
        try:
            frame = b"Q%b\n%b\n%b" % (self._origin, rid, orjson.dumps(body))
            if not await self._publish(self.channel_of(node), frame):
                return None
            async with asyncio.timeout(timeout):
                return await answer
        except TimeoutError:
            return None
        finally:
            self._pending.pop(rid, None)

    async def probe(self) -> bool:
        """Publish to ourselves on both channels and wait to hear both; restart what did not."""
        channels = (self.own_channel, self.broadcast_channel)
        nonces = {channel: uuid.uuid4().hex.encode() for channel in channels}
        heard = {
            channel: self._heard.setdefault(nonce, asyncio.Event())
            for channel, nonce in nonces.items()
        }
        problems: list[str] = []
        try:
            with contextlib.suppress(TimeoutError):
                await self._wait_subscribed()
            published = []
            for channel, nonce in nonces.items():
                subscribed = self._subscribed.get(channel)
                if subscribed is None or not subscribed.is_set():
                    problems.append(f"{channel} not subscribed")
                    continue
                try:
                    await self._publish(channel, b"P%b\n%b" % (self._origin, nonce))
                except BackplaneUnavailable as exc:
                    problems.append(str(exc))
                    continue
                published.append(heard[channel])
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._probe_timeout):
                    for event in published:
                        await event.wait()
        finally:
            for nonce in nonces.values():
                self._heard.pop(nonce, None)
        behind = [c for c, event in heard.items() if not event.is_set() and self._inflows[c].paused]
        if behind:
            log.warning(
                "backplane probe not heard on %s: too far behind to read it (not restarted)",
                ", ".join(behind),
            )
        deaf = [c for c, event in heard.items() if not event.is_set() and c not in behind]
        if deaf:
            log.warning(
                "backplane probe failed (%s); resubscribing to %s",
                "; ".join(problems) or "not heard",
                ", ".join(deaf),
            )
            for channel in deaf:
                self._restart(channel)
        elif not self.healthy:
            log.info("backplane healthy")
        self.healthy = not deaf
        return self.healthy

    async def _publish(self, channel: str, frame: bytes) -> int:
        command = pack(self._publish_verb, channel.encode(), frame)
        try:
            link = await self._link_for(channel)
            try:
                return int(await link.call(command))
            except ReplyError as exc:
                if not self._target.sharded or not str(exc).startswith("MOVED"):
                    raise
                # The channel's slot moved. A command refused with MOVED did not run, so sending
                # it again to the new owner cannot duplicate it.
                await self._locator.refresh()
                self._link_of.pop(key_slot(channel.encode()), None)
                return int(await (await self._link_for(channel)).call(command))
        except Exception as exc:  # whatever it was, the message is not known to have gone
            self.healthy = False
            raise BackplaneUnavailable(f"cannot publish to Redis: {exc}") from exc

    async def _link_for(self, channel: str) -> Link:
        """The command link for *channel*'s Redis, (re)opened if it is not open. On a cluster a
        shard that went away may have failed over to a replica at another address, which
        nothing else would tell (no ``MOVED`` comes from a server that is gone): the slot map
        is reloaded before the channel's shard is looked up again, and once more if it cannot
        be reached (nothing was sent yet, so trying the new owner cannot duplicate anything)."""
        if self._stopped:
            raise LinkDown("the backplane is stopped")
        sharded = self._target.sharded
        slot = key_slot(channel.encode()) if sharded else 0
        link = self._link_of.get(slot)
        if link is not None and link.is_open:
            return link
        if link is not None and sharded:
            await self._locator.refresh()
        try:
            link = await self._link_to(await self._locator.endpoint(channel))
        except LinkDown:
            if not sharded:
                raise
            await self._locator.refresh()
            link = await self._link_to(await self._locator.endpoint(channel))
        self._link_of[slot] = link
        return link

    async def _link_to(self, endpoint: Endpoint) -> Link:
        """The command link to *endpoint*, opened if it is not: the channels of one shard share
        it, and callers that come while it opens wait for the same attempt."""
        opened = self._opened.get(endpoint.address)
        if opened is None or (opened.done() and not _usable(opened)):
            opened = asyncio.ensure_future(Link.open(endpoint, timeout=self._timeout))
            self._opened[endpoint.address] = opened
        return await asyncio.shield(opened)

    async def _announce(self) -> None:
        failures = 0
        while self._unannounced or self._unannounced_all:
            await asyncio.sleep(0)  # what else changes in this step goes in the same frame
            names = None if self._unannounced_all else sorted(self._unannounced)
            self._unannounced_all = False
            self._unannounced.clear()
            try:
                await self._publish(
                    self.broadcast_channel, b"R%b\n%b" % (self._origin, orjson.dumps(names))
                )
                failures = 0
            except BackplaneUnavailable as exc:
                self.announce_routes(names)  # back in the queue, merged with what came since
                pause = _RETRY_PAUSES[min(failures, len(_RETRY_PAUSES) - 1)]
                failures += 1
                log.warning("route announcement not sent (%s); again in %.2f s", exc, pause)
                await asyncio.sleep(pause)

    # -- receiving

    def _spawn_listener(self, channel: str) -> None:
        subscribed = self._subscribed[channel] = asyncio.Event()
        self._listeners[channel] = asyncio.create_task(
            self._listen(channel, subscribed), name=f"wshub:backplane:{channel}"
        )

    async def _listen(self, channel: str, subscribed: asyncio.Event) -> None:
        """One subscription, kept: resubscribed after an error or a slot move, forever."""
        failures = 0
        inflow = self._inflows[channel]
        while True:
            link: Link | None = None
            try:
                link = await self._subscribe(channel)
                inflow.attach(link)
                subscribed.set()
                if channel == self.broadcast_channel and self._on_routes is not None:
                    self._on_routes(None)  # announcements made while not subscribed are lost
                failures = 0
                why = await asyncio.shield(link.closed)
                if why != _MOVED:
                    raise LinkDown(why)
                # A cluster slot moved (Redis pushes this): subscribe at the new owner.
                log.info("backplane channel %s moved; resubscribing", channel)
            except Exception as exc:  # whatever it was, the listener must go on
                pause = _RETRY_PAUSES[min(failures, len(_RETRY_PAUSES) - 1)]
                failures += 1
                log.warning(
                    "backplane subscription %s lost (%s); again in %.2f s", channel, exc, pause
                )
                await asyncio.sleep(pause)
            finally:
                subscribed.clear()
                if link is not None:
                    inflow.detach(link)
                    link.close()

    async def _subscribe(self, channel: str) -> Link:
        if self._target.sharded:
            await self._locator.refresh()  # the slot map as it is now
        link = await Link.open(await self._locator.endpoint(channel), timeout=self._probe_timeout)
        link.on_push = functools.partial(self._pushed, link, self._inflows[channel])
        try:
            await link.call(pack(self._subscribe_verb, channel.encode()))
        except BaseException:
            link.close()
            raise
        return link

    def _pushed(self, link: Link, inflow: _Inflow, push: Any) -> None:
        """What a subscription's link hears (from the event loop's read callback)."""
        if not isinstance(push, list) or len(push) != 3:
            return
        kind = push[0]
        if kind in (b"message", b"smessage"):
            inflow.received(push[2])
        elif kind in (b"sunsubscribe", b"unsubscribe"):
            link.close(_MOVED)

    def _handled(self, frame: bytes) -> Awaitable[None] | None:
        """Handle *frame*; what remains to be awaited (a broadcast's fan-out), if anything. A
        frame that cannot be read is logged and dropped: it must not end the subscription."""
        try:
            return self._on_frame(frame)
        except Exception:
            log.exception("backplane frame not understood: %r", frame[:80])
            return None

    def _on_frame(self, frame: bytes) -> Awaitable[None] | None:
        kind, rest = frame[:1], frame[1:]
        counted = self._frames.get(kind)
        if counted is not None:
            counted.inc()
        origin, _, rest = rest.partition(b"\n")
        if kind == b"D":
            event, _, rest = rest.partition(b"\n")
            sids, _, packet = rest.partition(b"\n")
            self._inbox.deliver(event.decode(), sids.decode().split(","), packet.decode())
        elif kind == b"B":
            if origin != self._origin:  # the origin served its own clients already
                event, _, packet = rest.partition(b"\n")
                return self._inbox.broadcast_in(event.decode(), packet.decode())
        elif kind == b"P":
            heard = self._heard.get(rest) if origin == self._origin else None
            if heard is not None:
                heard.set()
        elif kind == b"Q":
            rid, _, body = rest.partition(b"\n")
            self._spawn(self._answer(origin.decode(), rid, orjson.loads(body)))
        elif kind == b"A":
            rid, _, body = rest.partition(b"\n")
            waiter = self._pending.get(rid)
            if waiter is not None and not waiter.done():
                waiter.set_result(orjson.loads(body))
        elif kind == b"C":
            self._spawn(self._inbox.control(orjson.loads(rest)))
        elif kind == b"R" and origin != self._origin and self._on_routes is not None:
            self._on_routes(orjson.loads(rest))
        return None

    async def _answer(self, origin: str, rid: bytes, body: dict[str, Any]) -> None:
        answer = await self._inbox.request(body)
        with contextlib.suppress(BackplaneUnavailable):  # the asker times out and says so
            await self._publish(
                self.channel_of(origin), b"A%b\n%b\n%b" % (self._origin, rid, orjson.dumps(answer))
            )

    def _spawn(self, work: Awaitable[Any]) -> None:
        # Requests can take a while (a probe waits up to a second): never in the listener's way.
        task = asyncio.ensure_future(work)
        self._work.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._work.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("backplane request failed", exc_info=task.exception())

    def _restart(self, channel: str) -> None:
        old = self._listeners.get(channel)
        if old is not None:
            old.cancel()
            # Kept until it has closed its connection, so that stop() waits for it too.
            self._work.add(old)
            old.add_done_callback(self._done)
        self._spawn_listener(channel)

    async def _wait_subscribed(self) -> None:
        async with asyncio.timeout(self._probe_timeout):
            for event in self._subscribed.values():
                await event.wait()


def _usable(opened: asyncio.Task[Link]) -> bool:
    """Whether a finished attempt to open a link gave one that is still open."""
    return not opened.cancelled() and opened.exception() is None and opened.result().is_open


class _Inflow:
    """One subscription's frames, handled in the order they arrived: at once, except behind a
    broadcast still being fanned out, where they wait in a backlog. Past ``_BACKLOG_HIGH``
    waiting frames the subscription's link stops reading until the backlog is down to
    ``_BACKLOG_LOW``. Probe nonces are heard at once, backlog or not (their order means
    nothing), so a subscription that is busy is not taken for a deaf one."""

    def __init__(self, channel: str, handle: Callable[[bytes], Awaitable[None] | None]) -> None:
        self.channel = channel
        self._handle = handle
        self._link: Link | None = None
        self.backlog: deque[bytes] = deque()
        self.drainer: asyncio.Task[None] | None = None
        self.paused = False

    def attach(self, link: Link) -> None:
        self._link = link
        if self.paused:
            link.pause_reading()

    def detach(self, link: Link) -> None:
        if self._link is link:
            self._link = None

    def received(self, frame: bytes) -> None:
        if self.drainer is None or frame[:1] == b"P":
            work = self._handle(frame)
            if work is not None:
                self.drainer = asyncio.create_task(
                    self._drain(work), name=f"wshub:backplane:drain:{self.channel}"
                )
            return
        self.backlog.append(frame)  # a broadcast is being fanned out: this waits its turn
        if len(self.backlog) >= _BACKLOG_HIGH and not self.paused:
            self.paused = True
            if self._link is not None:
                self._link.pause_reading()

    async def _drain(self, work: Awaitable[None] | None) -> None:
        """Fan out a broadcast, then what came behind it, in order, until nothing waits."""
        try:
            while work is not None:
                try:
                    await work
                except Exception:
                    log.exception("backplane broadcast not fanned out")
                work = None
                while work is None and self.backlog:
                    work = self._handle(self.backlog.popleft())
                    if self.paused and len(self.backlog) <= _BACKLOG_LOW:
                        # What the link read meanwhile joins the backlog from this call (and
                        # may pause it again).
                        self.paused = False
                        if self._link is not None:
                            self._link.resume_reading()
        finally:
            self.drainer = None
