"""Serve the newest valid certificate to new handshakes, without restarting or dropping anyone.

Theory of operation (measured in ``docs/tls-reload.md``, "approach B"):

* Hypercorn's listeners get one *listening* context whose ``sni_callback`` runs on every
  ClientHello (OpenSSL calls it without SNI too) and points the connection at :attr:`current`.
  Certificate selection and client verification happen after that, with the new context.
* A reload builds a complete new context from bytes that passed every check and publishes it
  with a single assignment. A published context is never changed: ``load_cert_chain`` on a live
  context leaves it keyless after a mismatch, keeps an old certificate of another key type, and
  cannot drop a CA.
* Open connections keep the context they were made with; nothing is dropped.
* ``verify_mode`` and ``verify_flags`` are copied into each connection from the listening
  context, so those two need a restart; certificate, key and CA bundle reload.
* The watcher observes the directories, not the files: atomic renames and Kubernetes ``..data``
  swaps replace inodes, and a watch on the old file dies with it. Events are only a hint to
  re-read; a content digest decides whether anything changed, and a periodic re-check catches
  what the watcher missed.
* A pair written file by file is briefly mismatched. That read is refused, the old pair stays
  in service, and the refusal is a WARNING; it becomes an ERROR only if no valid pair shows up
  within ``settle_seconds``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from hypercorn.config import Config
from watchfiles import awatch

from ..protocol.timestamps import iso_timestamp
from .context import build_context
from .material import (
    CertInfo,
    InvalidMaterial,
    RawMaterial,
    TlsFiles,
    ValidatedMaterial,
    format_moment,
    read_material,
    validate,
)

log = logging.getLogger("wshub.tls")

Outcome = Literal["ok", "rejected", "unchanged"]
Listener = Callable[[CertInfo], Awaitable[None]]
Clock = Callable[[], datetime]

TRIGGER_INITIAL = "initial"
TRIGGER_WATCH = "watch"
TRIGGER_RECHECK = "recheck"
# Triggers that fire on their own; a repeated identical refusal from them is not news.
_AUTOMATIC_TRIGGERS = frozenset({TRIGGER_WATCH, TRIGGER_RECHECK})

_EXPIRY_CHECK_EVERY = timedelta(days=1)
_WATCHER_RETRY_SECONDS = 1.0
_STOP_TIMEOUT_SECONDS = 5.0


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class ReloadOutcome:
    """One reload attempt.

    ``serial`` is the serial in service *after* the attempt (the old one when refused).
    """

    time: str
    trigger: str
    outcome: Outcome
    reason: str | None
    serial: int | None

    def as_dict(self) -> dict[str, str | None]:
        return {
            "time": self.time,
            "trigger": self.trigger,
            "outcome": self.outcome,
            "reason": self.reason,
            "serial": None if self.serial is None else str(self.serial),
        }


@dataclass(frozen=True, slots=True)
class _Served:
    material: ValidatedMaterial
    context: ssl.SSLContext


class TlsReloader:
    """Holds the served TLS context and swaps it when the files change.

    Durations are in seconds except the two watchfiles knobs, which keep watchfiles' units
    (milliseconds). *step_ms* is the quiet time after the last file event before a batch is
    handed over, and so sets the reload latency (about one to two steps); *debounce_ms* only caps
    a batch while events keep coming. *clock* returns an aware datetime and is what validity
    and expiry checks compare against.
    """

    def __init__(
        self,
        hypercorn_config: Config,
        files: TlsFiles,
        *,
        step_ms: int = 50,
        debounce_ms: int = 1_600,
        settle_seconds: float = 2.0,
        recheck_interval: float = 60.0,
        expiry_warn_days: float = 14.0,
        history_size: int = 50,
        clock: Clock = utc_now,
    ) -> None:
        if step_ms <= 0 or debounce_ms <= 0:
            raise ValueError("step_ms and debounce_ms must be positive")
        if settle_seconds < 0 or recheck_interval <= 0 or expiry_warn_days < 0:
            raise ValueError("settle_seconds, recheck_interval and expiry_warn_days out of range")
        self._config = hypercorn_config
        self._files = files
        self._step_ms = step_ms
        self._debounce_ms = debounce_ms
        self._settle_seconds = settle_seconds
        self._recheck_interval = recheck_interval
        self._expiry_warn_days = expiry_warn_days
        self._clock = clock

        self._served: _Served | None = None
        self._listening: ssl.SSLContext | None = None
        self._listeners: list[Listener] = []
        self._history: deque[ReloadOutcome] = deque(maxlen=history_size)
        self._lock = asyncio.Lock()
        self.reloads_ok = 0
        self.reloads_rejected = 0
        self.last_error: str | None = None

        # A run of refusals since the last good read ("streak"); see _rejected().
        self._streak = 0
        self._streak_open = False
        self._streak_settled = False
        self._settle_task: asyncio.Task[None] | None = None
        self._last_refusal: tuple[str | None, str] | None = None

        self._next_expiry_check: datetime | None = None
        self._stop_event = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # -- state -------------------------------------------------------------------------------

    @property
    def files(self) -> TlsFiles:
        return self._files

    @property
    def directories(self) -> tuple[str, ...]:
        """What the watcher observes: the parent directory of every configured file."""
        return tuple(dict.fromkeys(os.path.dirname(path) for path in self._files.paths))

    @property
    def current(self) -> ssl.SSLContext:
        """The newest valid context; new handshakes switch to it."""
        return self._require_served().context

    @property
    def info(self) -> CertInfo:
        """The certificate new handshakes are served."""
        return self._require_served().material.info

    @property
    def history(self) -> tuple[ReloadOutcome, ...]:
        """Recent attempts, oldest first (bounded; quiet periodic re-checks are not kept)."""
        return tuple(self._history)

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def add_listener(self, callback: Listener) -> None:
        """Await *callback* once after each reload that changed the served material.

        It receives the new :class:`CertInfo` (a CA-bundle-only change calls it too, with an
        unchanged serial). Listeners run one after another before :meth:`reload` returns, so
        keep them short; an exception is logged and does not stop the others.
        """
        self._listeners.append(callback)

    def remove_listener(self, callback: Listener) -> None:
        with contextlib.suppress(ValueError):
            self._listeners.remove(callback)

    # -- loading -----------------------------------------------------------------------------

    def load_initial(self) -> CertInfo:
        """Load the configured pair, or raise :class:`InvalidMaterial` saying why not.

        Meant for start-up, where a bad pair must stop the server. Idempotent: once loaded,
        later changes go through :meth:`reload`.
        """
        if self._served is not None:
            return self._served.material.info
        now = self._clock()
        material = validate(read_material(self._files), now)
        self._served = _Served(material, build_context(self._config, material))
        info = material.info
        self._record(TRIGGER_INITIAL, "ok", None)
        log.info(
            "TLS certificate loaded: serial %s, sha256 %s, subject %s, expires %s (%.1f days left)",
            info.serial_hex,
            info.fingerprint_sha256,
            info.subject,
            format_moment(info.not_after),
            info.days_left(now),
        )
        return info

    def listening_context(self) -> ssl.SSLContext:
        """The context to give every secure listener (loads the pair first if needed).

        Always the same object. It carries the initial pair, so it is complete on its own, and
        its ``sni_callback`` moves each new connection to :attr:`current`. It also fixes
        ``verify_mode`` and holds the session cache for every connection.
        """
        if self._listening is None:
            self.load_initial()
            listening = build_context(self._config, self._require_served().material)
            listening.sni_callback = self._select_context
            self._listening = listening
        return self._listening

    def _select_context(
        self, ssl_obj: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, _: ssl.SSLContext
    ) -> None:
        # Runs inside OpenSSL's ClientHello processing for every handshake: keep it to one
        # attribute read and one assignment. Returning None lets the handshake continue.
        served = self._served
        if served is not None:
            ssl_obj.context = served.context

    async def reload(self, trigger: str = "manual") -> ReloadOutcome:
        """Re-read the files and serve them if they changed and pass every check.

        Never raises for bad material: the old context stays and the outcome says why.
        Calls are serialised, so the watcher and a signal handler can both call this.
        """
        async with self._lock:
            outcome, published = await self._reload_locked(trigger)
        if published is not None:
            await self._notify(published)
        return outcome

    async def _reload_locked(self, trigger: str) -> tuple[ReloadOutcome, CertInfo | None]:
        now = self._clock()
        try:
            raw = await asyncio.to_thread(read_material, self._files)
        except InvalidMaterial as exc:
            return self._rejected(trigger, None, str(exc)), None
        served = self._served
        if served is not None and raw.digest == served.material.raw.digest:
            self._close_streak()
            return self._record(trigger, "unchanged", None), None
        try:
            # RSA key loading alone costs ~25 ms: keep it off the event loop.
            material, context = await asyncio.to_thread(self._prepare, raw, now)
        except InvalidMaterial as exc:
            return self._rejected(trigger, raw.digest, str(exc)), None
        except Exception as exc:
            # Not bad material but a fault here or in OpenSSL's environment; the served context
            # is intact, so keep serving it and keep watching rather than dying.
            log.exception("TLS reload failed unexpectedly (trigger %s)", trigger)
            return self._rejected(trigger, raw.digest, f"unexpected error: {exc!r}"), None
        return self._publish(trigger, material, context, now), material.info

    def _prepare(self, raw: RawMaterial, now: datetime) -> tuple[ValidatedMaterial, ssl.SSLContext]:
        material = validate(raw, now)
        return material, build_context(self._config, material)

    def _publish(
        self, trigger: str, material: ValidatedMaterial, context: ssl.SSLContext, now: datetime
    ) -> ReloadOutcome:
        previous = self._served.material.info if self._served else None
        self._served = _Served(material, context)  # the swap: one assignment
        self.reloads_ok += 1
        self._close_streak()
        info = material.info
        log.info(
            "TLS certificate reloaded (%s): serial %s -> %s, sha256 %s, subject %s, "
            "expires %s (%.1f days left)",
            trigger,
            previous.serial_hex if previous else "-",
            info.serial_hex,
            info.fingerprint_sha256,
            info.subject,
            format_moment(info.not_after),
            info.days_left(now),
        )
        self.check_expiry(now)
        return self._record(trigger, "ok", None)

    # -- refusals ----------------------------------------------------------------------------

    def _rejected(self, trigger: str, digest: str | None, reason: str) -> ReloadOutcome:
        refusal = (digest, reason)
        if trigger in _AUTOMATIC_TRIGGERS and refusal == self._last_refusal:
            # The same bad bytes seen again by a re-check or a spurious event: already reported.
            log.debug("TLS material still refused (%s): %s", trigger, reason)
            return ReloadOutcome(self._now_iso(), trigger, "rejected", reason, self._serial())
        self._last_refusal = refusal
        self.reloads_rejected += 1
        self.last_error = reason
        if not self._streak_open:
            self._open_streak()
        level = logging.ERROR if self._streak_settled else logging.WARNING
        log.log(
            level,
            "TLS reload refused (%s), still serving serial %s: %s",
            trigger,
            self._serial_hex(),
            reason,
        )
        return self._record(trigger, "rejected", reason)

    def _open_streak(self) -> None:
        self._streak += 1
        self._streak_open = True
        self._streak_settled = False
        if self._settle_seconds == 0:
            self._streak_settled = True
            return
        # A writer that replaces the files one after the other shows us a mixed pair for a
        # moment; only a refusal that outlives settle_seconds deserves an ERROR.
        self._settle_task = asyncio.get_running_loop().create_task(
            self._settle(self._streak), name="tls-settle"
        )

    async def _settle(self, streak: int) -> None:
        await asyncio.sleep(self._settle_seconds)
        if self._streak_open and self._streak == streak:
            self._streak_settled = True
            log.error(
                "No valid TLS certificate/key pair within %.1f s; still serving serial %s "
                "(expires %s): %s",
                self._settle_seconds,
                self._serial_hex(),
                format_moment(self.info.not_after) if self._served else "-",
                self.last_error,
            )

    def _close_streak(self) -> None:
        self._streak_open = False
        self._streak_settled = False
        self._last_refusal = None
        self.last_error = None
        if self._settle_task is not None:
            self._settle_task.cancel()
            self._settle_task = None

    # -- expiry ------------------------------------------------------------------------------

    def check_expiry(self, now: datetime | None = None) -> None:
        """Warn when the served certificate is close to expiry; the next check is a day later.

        Expiry of the old certificate, while every new one is refused, is the outage this
        layer can actually cause, so it is said loudly and repeatedly.
        """
        now = self._clock() if now is None else now
        self._next_expiry_check = now + _EXPIRY_CHECK_EVERY
        if self._served is None:
            return
        info = self._served.material.info
        if info.seconds_left(now) <= 0:
            log.error(
                "TLS certificate serial %s (%s) expired on %s; clients will refuse it",
                info.serial_hex,
                info.subject,
                format_moment(info.not_after),
            )
        elif info.days_left(now) < self._expiry_warn_days:
            log.warning(
                "TLS certificate serial %s (%s) expires in %.1f days, on %s",
                info.serial_hex,
                info.subject,
                info.days_left(now),
                format_moment(info.not_after),
            )

    def _expiry_check_due(self, now: datetime) -> bool:
        return self._next_expiry_check is None or now >= self._next_expiry_check

    # -- watching ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the watcher in the running loop (loads the pair first if needed).

        When this returns, the directory watches are in place: a change made afterwards is seen.
        """
        if self.running:
            return
        self.load_initial()
        self._stop_event = asyncio.Event()
        self.check_expiry()
        self._task = asyncio.get_running_loop().create_task(self._watch(), name="tls-watcher")
        # awatch sets up its inotify watches synchronously on its first step, before its first
        # await; yielding once lets the new task take that step.
        await asyncio.sleep(0)

    async def stop(self) -> None:
        """Stop the watcher; the served context stays usable."""
        self._stop_event.set()
        task, self._task = self._task, None
        if task is not None:
            # The watch thread sees the stop event within one step; cancel only if stuck.
            done, _ = await asyncio.wait({task}, timeout=_STOP_TIMEOUT_SECONDS)
            if not done:
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._settle_task is not None:
            self._settle_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._settle_task
            self._settle_task = None

    async def _watch(self) -> None:
        while not self._stop_event.is_set():
            try:
                async for changes in awatch(
                    *self.directories,
                    watch_filter=None,  # Kubernetes swaps never name tls.crt; see module doc
                    recursive=False,
                    step=self._step_ms,
                    debounce=self._debounce_ms,
                    rust_timeout=max(1, int(self._recheck_interval * 1000)),
                    yield_on_timeout=True,
                    stop_event=self._stop_event,
                ):
                    await self.reload(TRIGGER_WATCH if changes else TRIGGER_RECHECK)
                    now = self._clock()
                    if self._expiry_check_due(now):
                        self.check_expiry(now)
            except Exception:
                log.exception("TLS file watcher failed; retrying in %.0f s", _WATCHER_RETRY_SECONDS)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop_event.wait(), _WATCHER_RETRY_SECONDS)

    async def _notify(self, info: CertInfo) -> None:
        for callback in list(self._listeners):
            try:
                await callback(info)
            except Exception:
                log.exception("TLS reload listener %r failed", callback)

    # -- helpers -----------------------------------------------------------------------------

    def _require_served(self) -> _Served:
        if self._served is None:
            raise RuntimeError("TLS material not loaded yet: call load_initial() first")
        return self._served

    def _record(self, trigger: str, outcome: Outcome, reason: str | None) -> ReloadOutcome:
        record = ReloadOutcome(self._now_iso(), trigger, outcome, reason, self._serial())
        if not (outcome == "unchanged" and trigger == TRIGGER_RECHECK):
            self._history.append(record)
        return record

    def _now_iso(self) -> str:
        return iso_timestamp(self._clock())

    def _serial(self) -> int | None:
        return self._served.material.info.serial if self._served else None

    def _serial_hex(self) -> str:
        return self._served.material.info.serial_hex if self._served else "-"
