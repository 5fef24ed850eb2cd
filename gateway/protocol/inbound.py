"""One pydantic model per client event.

Models are strict (no coercion of ``"1"`` into ``1``) and keep unknown fields where the contract
forwards them (custom message fields, extra metadata keys). Limits that depend on settings
(username length, list lengths) come in through the validation context as :class:`Limits`.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from .events import Inbound


@dataclass(frozen=True, slots=True)
class Limits:
    max_username_length: int = 64
    max_following: int = 1_000
    max_targets: int = 100


def _limits(info: ValidationInfo) -> Limits:
    return info.context if isinstance(info.context, Limits) else Limits()


def check_username(value: str, limits: Limits) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    if len(value) > limits.max_username_length:
        raise ValueError(f"must be at most {limits.max_username_length} characters")
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") for ch in value):
        raise ValueError("must not contain control characters")
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)

    payload_optional: ClassVar[bool] = False
    """Whether the event may come without a payload (then it is read as ``{}``)."""


class _Open(BaseModel):
    """A payload whose unknown fields travel on to the receivers."""

    model_config = ConfigDict(strict=True, extra="allow", frozen=True)

    def custom_fields(self) -> dict[str, Any]:
        return dict(self.__pydantic_extra__ or {})


class Empty(_Strict):
    """Events that carry nothing (``None`` or ``{}``); stray keys are ignored."""

    payload_optional = True


class ClientsPage(_Strict):
    """``system:clients``: a page of the client list. Without arguments, the first page.

    ``cursor`` (the previous page's ``nextCursor``) pages stably while clients come and go;
    ``offset`` skips that many clients of the list as it is now.
    """

    payload_optional = True
    limit: int | None = Field(None, ge=1)
    cursor: str | None = Field(None, min_length=1, max_length=200)
    offset: int | None = Field(None, ge=0)


_KNOWN_METADATA = frozenset({"username", "following", "profile"})


class SetData(_Open):
    username: str | None = None
    following: list[str] | None = None
    profile: dict[str, Any] | None = None

    @field_validator("username")
    @classmethod
    def _username(cls, value: str | None, info: ValidationInfo) -> str | None:
        return None if value is None else check_username(value, _limits(info))

    @field_validator("following")
    @classmethod
    def _following(cls, value: list[str] | None, info: ValidationInfo) -> list[str] | None:
        if value is None:
            return None
        limits = _limits(info)
        if len(value) > limits.max_following:
            raise ValueError(f"must list at most {limits.max_following} usernames")
        # Order kept, duplicates dropped: following is a set with a stable order on the wire.
        return list(dict.fromkeys(check_username(name, limits) for name in value))

    def patch(self) -> dict[str, Any]:
        """The fields the client actually sent, for a partial update.

        An explicit ``null`` for a known field means "leave it as it is", never "erase it": the
        client list promises a string-or-null username, a list and an object.
        """
        sent = self.model_dump(exclude_unset=True)
        return {k: v for k, v in sent.items() if v is not None or k not in _KNOWN_METADATA}


class General(_Open):
    type: str = Field(min_length=1)


class Direct(_Open):
    target: str = Field(min_length=1)
    type: str = Field(min_length=1)


class Typing(_Strict):
    target: str = Field(min_length=1)


class Notification(_Open):
    type: str = Field(min_length=1)
    content: dict[str, Any]
    targets: list[str] | None = None

    @field_validator("targets")
    @classmethod
    def _targets(cls, value: list[str] | None, info: ValidationInfo) -> list[str] | None:
        if value is None:
            return None
        limits = _limits(info)
        if not value:
            raise ValueError("must name at least one username when present")
        if len(value) > limits.max_targets:
            raise ValueError(f"must list at most {limits.max_targets} usernames")
        return list(dict.fromkeys(value))


class HeartbeatAck(_Strict):
    id: str = Field(min_length=1, max_length=128)
    timestamp: str | None = None


MODELS: dict[str, type[BaseModel]] = {
    Inbound.SET_DATA: SetData,
    Inbound.CLIENTS: ClientsPage,
    Inbound.PING: Empty,
    Inbound.GENERAL: General,
    Inbound.DIRECT: Direct,
    Inbound.TYPING_START: Typing,
    Inbound.TYPING_STOP: Typing,
    Inbound.NOTIFICATION: Notification,
    Inbound.HEARTBEAT_ACK: HeartbeatAck,
    Inbound.GET_CONFIG: Empty,
}
