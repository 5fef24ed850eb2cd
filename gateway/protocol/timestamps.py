"""Timestamps in the form of JavaScript's ``Date.toISOString()``: ``2023-06-15T12:34:56.789Z``."""

import time
from datetime import UTC, datetime

# Every event carries a timestamp; the date-and-time part changes once a second, so it is
# formatted once a second. One tuple, replaced whole, so concurrent readers see a matching pair.
_second: tuple[int, str] = (-1, "")


def iso_timestamp(moment: datetime | None = None) -> str:
    global _second
    if moment is not None:
        moment = moment.astimezone(UTC)
        return f"{moment:%Y-%m-%dT%H:%M:%S}.{moment.microsecond // 1000:03d}Z"
    now = time.time()
    whole = int(now)
    second = _second
    if second[0] != whole:
        second = _second = (whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)))
    return f"{second[1]}.{int((now - whole) * 1000):03d}Z"
