"""Log lines an operator can grep and a machine can parse.

Every record carries the connection id of the event being handled (``-`` outside one), from a
context variable the transport sets, so one connection's story can be followed across modules.
Text by default; one JSON object per line with ``log_format = "json"``.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from datetime import UTC, datetime

connection_id: contextvars.ContextVar[str] = contextvars.ContextVar("connection_id", default="-")

_PRINTABLE_LIMIT = 80


def printable(value: object, limit: int = _PRINTABLE_LIMIT) -> str:
    """A client-controlled value as a log may show it: quoted, escaped, at most *limit* chars.

    ``repr`` escapes newlines and other control characters, so a client cannot forge a log
    line; the limit keeps one client from filling the log.
    """
    text = value if isinstance(value, str) else str(value)
    if len(text) > limit:
        return repr(text[:limit]) + f"...({len(text)} chars)"
    return repr(text)


class ConnectionIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.sid = connection_id.get()
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "sid": getattr(record, "sid", "-"),
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(sid)s] %(message)s"


def configure(level: str, fmt: str) -> None:
    """Route every logger (Hypercorn's included) through one handler on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(ConnectionIdFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("hypercorn.error", "hypercorn.access"):
        # Hypercorn adds its own handlers; ours is enough.
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # watchfiles tells every batch of file events at INFO; the TLS reloader logs what matters.
    logging.getLogger("watchfiles").setLevel(logging.WARNING)
