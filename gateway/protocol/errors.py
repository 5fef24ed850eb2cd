"""Error codes of ``system:error`` and the exception that carries one through the pipeline."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from .close import CloseReason

# Beyond the seven codes of the contract: failures that are the server's, not the client's.
UNAVAILABLE = "UNAVAILABLE"
"""A dependency (Redis) is unreachable: nothing was delivered, retrying is safe."""
INTERNAL_ERROR = "INTERNAL_ERROR"
"""A bug; logged with its traceback."""


class ErrorCode(StrEnum):
    INVALID_FORMAT = "INVALID_FORMAT"
    NO_USERNAME = "NO_USERNAME"
    TARGET_NOT_FOUND = "TARGET_NOT_FOUND"
    RATE_LIMIT = "RATE_LIMIT"
    FORBIDDEN = "FORBIDDEN"
    DUPLICATE_USERNAME = "DUPLICATE_USERNAME"
    PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"


@dataclass(frozen=True, slots=True)
class Reply:
    """An event sent back to the client that caused it (and returned through its ack)."""

    event: str
    payload: dict[str, Any]


class GatewayError(Exception):
    """A rejected event. The client gets ``system:error`` {code, message}.

    *reply* is the event's own failure answer (``system:dataSet`` or ``system:directSent`` with
    ``success: false``), sent before the error where the contract has one.
    """

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        reply: Reply | None = None,
        *,
        extra: dict[str, Any] | None = None,
        close: CloseReason | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reply = reply
        self.extra = extra or {}
        self.close = close
        """Set when the connection must also end, after the error is sent."""

    def payload(self) -> dict[str, Any]:
        return {"code": self.code.value, "message": self.message, **self.extra}
