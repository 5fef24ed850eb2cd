"""API keys: which configured key, if any, a request's ``Authorization: Bearer`` carries.

Only SHA-256 digests of the keys are kept. A presented key is hashed and compared with every
configured digest by :func:`hmac.compare_digest`, without stopping at a match, so the time an
answer takes says nothing about which key, or how much of one, was right.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass

from ..auth.tokens import bearer_token


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: str
    """A name for the key that logs and the idempotency records may carry: the start of its
    digest, so it stays the same when keys are reordered or others added."""
    digest: bytes


class KeyRing:
    def __init__(self, secrets: Iterable[str]) -> None:
        self._keys = [_key(secret) for secret in secrets]

    def identify(self, authorization: str | None) -> ApiKey | None:
        """The key an ``Authorization`` header value carries; None for none or a wrong one."""
        token = bearer_token(None, {"authorization": authorization or ""})
        if token is None:
            return None
        presented = hashlib.sha256(token.encode()).digest()
        found: ApiKey | None = None
        for key in self._keys:
            if hmac.compare_digest(presented, key.digest):
                found = key
        return found


def _key(secret: str) -> ApiKey:
    digest = hashlib.sha256(secret.encode()).digest()
    return ApiKey(id="k" + digest.hex()[:12], digest=digest)
