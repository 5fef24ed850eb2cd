"""TLS noise, counted and told in one line: scanners, clients vanishing mid-record,
``APPLICATION_DATA_AFTER_CLOSE_NOTIFY``. None of it is a server fault, none of it affects other
connections, and a traceback per occurrence would bury the log lines that matter.

Handshakes that OpenSSL refuses never reach this handler: the event loop drops them (it logs
them only in debug mode). They are counted as ClientHellos without a completed handshake
(``runner.count_client_hellos``).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections import Counter
from typing import Any

from ..observability.metrics import Metrics

log = logging.getLogger("wshub.tls")

_NOISE = (ssl.SSLError, ConnectionResetError, BrokenPipeError, ConnectionAbortedError)


class TlsNoise:
    def __init__(self, metrics: Metrics) -> None:
        self._errors = metrics.tls_errors
        self.counts: Counter[str] = Counter()

    def exception_handler(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if isinstance(exc, _NOISE):
            kind = getattr(exc, "reason", None) or type(exc).__name__
            self.counts[str(kind)] += 1
            self._errors.labels(str(kind)).inc()
            peer = _peer(context)
            log.info("connection error from %s: %s (%s so far)", peer, kind, self.counts[kind])
            return
        loop.default_exception_handler(context)


def _peer(context: dict[str, Any]) -> str:
    transport = context.get("transport")
    if transport is None:
        return "unknown peer"
    try:
        peer = transport.get_extra_info("peername")
    except Exception:  # a transport already torn down
        return "unknown peer"
    return f"{peer[0]}:{peer[1]}" if peer else "unknown peer"
