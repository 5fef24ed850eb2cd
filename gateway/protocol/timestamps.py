"""Timestamps in the form of JavaScript's ``Date.toISOString()``: ``2023-06-15T12:34:56.789Z``."""

from datetime import UTC, datetime


def iso_timestamp(moment: datetime | None = None) -> str:
    moment = datetime.now(UTC) if moment is None else moment.astimezone(UTC)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{moment.microsecond // 1000:03d}Z"


def iso_from_epoch(seconds: float) -> str:
    return iso_timestamp(datetime.fromtimestamp(seconds, UTC))
