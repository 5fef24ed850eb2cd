"""JWT verification with PyJWT: HS256 with a shared secret, or RS256/ES256 with a public key."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jwt

from ..settings import Settings


class AuthError(Exception):
    """The token is missing or not acceptable; the message says why, for the client."""


@dataclass(frozen=True, slots=True)
class Identity:
    username: str
    roles: frozenset[str]
    expires_at: float
    """Seconds since the epoch."""


class TokenVerifier:
    def __init__(self, settings: Settings) -> None:
        if settings.auth_jwt_secret is not None:
            self._key: Any = settings.auth_jwt_secret.get_secret_value()
            default_algorithms = ["HS256"]
        elif settings.auth_jwt_public_key_file is not None:
            self._key = settings.auth_jwt_public_key_file.read_text()
            default_algorithms = ["RS256", "ES256"]
        else:
            raise ValueError("authentication is off: no secret and no public key")
        self._algorithms = settings.auth_jwt_algorithms or default_algorithms
        self._audience = settings.auth_jwt_audience
        self._issuer = settings.auth_jwt_issuer
        self._leeway = settings.auth_jwt_leeway
        self._username_claim = settings.auth_username_claim
        self._role_claim = settings.auth_role_claim

    def verify(self, token: str) -> Identity:
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=self._algorithms,
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options={"require": ["exp", self._username_claim]},
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("token expired") from None
        except jwt.InvalidAudienceError:
            raise AuthError("token audience is not accepted") from None
        except jwt.InvalidIssuerError:
            raise AuthError("token issuer is not accepted") from None
        except jwt.InvalidSignatureError:
            raise AuthError("token signature is invalid") from None
        except jwt.MissingRequiredClaimError as exc:
            raise AuthError(f"token lacks the {exc.claim!r} claim") from None
        except jwt.PyJWTError as exc:
            raise AuthError(f"token is invalid: {exc}") from None
        username = claims[self._username_claim]
        if not isinstance(username, str) or not username:
            raise AuthError(f"token claim {self._username_claim!r} must be a non-empty string")
        roles = claims.get(self._role_claim, [])
        if isinstance(roles, str):
            roles = roles.split()
        if not isinstance(roles, list):
            raise AuthError(f"token claim {self._role_claim!r} must be a list or a string")
        return Identity(username, frozenset(str(r) for r in roles), float(claims["exp"]))


def bearer_token(auth: Any, headers: Mapping[str, str]) -> str | None:
    """The token from the Socket.IO ``auth`` payload ``{token}`` or an ``Authorization`` header."""
    if isinstance(auth, dict) and isinstance(auth.get("token"), str):
        return str(auth["token"])
    scheme, _, value = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None
