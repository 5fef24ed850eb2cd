"""JSON as the wire sees it: compact, UTF-8. orjson is several times faster than the stdlib here."""

from __future__ import annotations

from typing import Any

import orjson


def dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def loads(text: str | bytes) -> Any:
    return orjson.loads(text)


def encoded_size(value: Any) -> int:
    """Bytes *value* takes on the wire as JSON."""
    return len(orjson.dumps(value))
