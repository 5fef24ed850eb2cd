"""Calls to a gateway's server API (``/api/v1``) over real HTTP, for the end-to-end tests."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import aiohttp

KEY = "e2e-api-key-0123456789abcdef"
OTHER_KEY = "e2e-other-key-0123456789abcdef"
SENDER = {"id": None, "username": "WS-Hub", "profile": {}, "system": True}


@dataclass(frozen=True)
class Answer:
    status: int
    body: Any
    headers: dict[str, str]
    """Lower-cased names."""


async def api(
    url: str,
    method: str,
    body: Any = None,
    *,
    key: str | None = KEY,
    headers: dict[str, str] | None = None,
    data: bytes | None = None,
    verb: str = "POST",
) -> Answer:
    """``verb`` *url*/api/v1/*method* with *body* as JSON (or the raw *data*), with *key*."""
    sent = dict(headers or {})
    if key is not None:
        sent["Authorization"] = f"Bearer {key}"
    payload = data if data is not None else (None if body is None else json.dumps(body).encode())
    async with (
        aiohttp.ClientSession() as session,
        session.request(
            verb,
            f"{url}/api/v1/{method}",
            data=payload,
            headers=sent,
            timeout=aiohttp.ClientTimeout(total=10),
        ) as response,
    ):
        text = await response.text()
        parsed = json.loads(text) if response.content_type == "application/json" else text
        return Answer(response.status, parsed, {k.lower(): v for k, v in response.headers.items()})
